"""Damaged archives and folders a user may point ``--data`` at: one DataError, never a traceback."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from edgemeta.data import load_dataset_folder, load_image_folder, load_omniglot
from edgemeta.errors import DataError
from tests.data.test_data_loaders import make_zip, png_bytes, write


def _omniglot_members() -> dict[str, bytes]:
    return {f"top/Greek/c{c}/{j}.png": png_bytes(10 * c + j) for c in range(2) for j in range(2)}


def _patch_member(path: Path, local: tuple[int, bytes], central: tuple[int, bytes]) -> None:
    """Overwrite bytes of the first member's local header and central-directory entry."""
    data = bytearray(path.read_bytes())
    lo = data.index(b"PK\x03\x04")
    co = data.index(b"PK\x01\x02")
    data[lo + local[0]:lo + local[0] + len(local[1])] = local[1]
    data[co + central[0]:co + central[0] + len(central[1])] = central[1]
    path.write_bytes(bytes(data))


def _deflated_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _omniglot_members().items():
            zf.writestr(name, data)
    return path


def test_zip_with_corrupt_compressed_data(tmp_path: Path) -> None:
    path = _deflated_zip(tmp_path / "o.zip")
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[26:30])
    start = 30 + name_len + extra_len
    data[start:start + 4] = b"\xff\xff\xff\xff"  # deflate block type 3 does not exist
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"o\.zip:top/Greek/c0/0\.png"):
        load_omniglot(path)


def test_zip_with_unsupported_compression(tmp_path: Path) -> None:
    path = _deflated_zip(tmp_path / "o.zip")
    _patch_member(path, (8, struct.pack("<H", 99)), (10, struct.pack("<H", 99)))
    with pytest.raises(DataError, match="c0/0.png"):
        load_omniglot(path)


def test_encrypted_zip_member(tmp_path: Path) -> None:
    path = _deflated_zip(tmp_path / "o.zip")
    _patch_member(path, (6, struct.pack("<H", 1)), (8, struct.pack("<H", 1)))
    with pytest.raises(DataError, match="c0/0.png"):
        load_omniglot(path)


def test_dataset_folder_reports_a_corrupt_omniglot_image(tmp_path: Path) -> None:
    """An Omniglot tree with one damaged drawing names that drawing, not the wrong layout."""
    for name, data in _omniglot_members().items():
        write(tmp_path / "omni" / name.removeprefix("top/"), data)
    write(tmp_path / "omni" / "Greek" / "c1" / "1.png", b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*c1/1\.png"):
        load_dataset_folder(tmp_path / "omni")


def test_dataset_folder_reads_both_layouts(tmp_path: Path) -> None:
    for name, data in _omniglot_members().items():
        write(tmp_path / "omni" / name.removeprefix("top/"), data)
    write(tmp_path / "classes" / "a" / "1.png", png_bytes(1))
    write(tmp_path / "classes" / "b" / "1.png", png_bytes(2))
    assert load_dataset_folder(tmp_path / "omni").class_groups == ("Greek", "Greek")
    assert load_dataset_folder(tmp_path / "classes").class_names == ("a", "b")
    with pytest.raises(DataError, match="images directly inside it"):
        load_dataset_folder(tmp_path / "classes" / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset_folder(tmp_path / "empty")


def test_dataset_folder_resizes_mixed_sizes_only_when_asked(tmp_path: Path) -> None:
    write(tmp_path / "a" / "1.png", png_bytes(1, (6, 5)))
    write(tmp_path / "b" / "1.png", png_bytes(2, (9, 7)))
    with pytest.raises(DataError, match="differ in size"):
        load_dataset_folder(tmp_path)
    ds = load_dataset_folder(tmp_path, mixed_size=(4, 3))
    assert ds.image_shape == (4, 3)
    # A folder of one size keeps its images as they are.
    write(tmp_path / "b" / "1.png", png_bytes(2, (6, 5)))
    assert load_dataset_folder(tmp_path, mixed_size=(4, 3)).image_shape == (5, 6)
    assert load_image_folder(tmp_path).image_shape == (5, 6)


def test_omniglot_zip_member_names_with_dot_prefix(tmp_path: Path) -> None:
    """Archives made with ``zip -r x.zip ./folder`` store './folder/...' names."""
    members = {f"./{name}": data for name, data in _omniglot_members().items()}
    ds = load_omniglot(make_zip(tmp_path / "o.zip", members))
    assert ds.class_names == ("Greek/c0", "Greek/c1") and len(ds) == 4


def test_dataset_folder_of_two_omniglot_sets_says_to_pass_each(tmp_path: Path) -> None:
    for top in ("images_background", "images_evaluation"):
        for name, data in _omniglot_members().items():
            write(tmp_path / top / name.removeprefix("top/"), data)
    with pytest.raises(DataError, match="several top-level folders"):
        load_dataset_folder(tmp_path)
