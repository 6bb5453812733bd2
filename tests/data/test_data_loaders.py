"""load_image_folder and load_omniglot: layouts, zips, deduplication, resizing and bad input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgemeta.data import ImageClassDataset, load_image_folder, load_omniglot
from edgemeta.errors import DataError


def png_bytes(value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    """A flat image (width, height) = size whose gray level is ``value``."""
    buf = io.BytesIO()
    color = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------- image folders


def test_image_folder_loads_sorted_grayscale(tmp_path: Path) -> None:
    write(tmp_path / "dog" / "b.png", png_bytes(20))
    write(tmp_path / "dog" / "a.PNG", png_bytes(10))
    write(tmp_path / "cat" / "x.jpg", _jpeg(200))
    write(tmp_path / "cat" / "notes.txt", b"ignored")
    write(tmp_path / "cat" / ".hidden.png", b"not even an image")
    write(tmp_path / "bird" / "1.bmp", _bmp(100))
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ("bird", "cat", "dog") and ds.class_groups == ("", "", "")
    assert ds.images.shape == (4, 5, 6) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 1, 2, 2]
    assert ds.images[:, 0, 0].tolist()[2:] == [10, 20]  # a.PNG before b.png
    assert abs(int(ds.images[1, 0, 0]) - 200) <= 3  # RGB JPEG became gray
    assert ds.name == tmp_path.name


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def _bmp(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (6, 5), value).save(buf, format="BMP")
    return buf.getvalue()


def test_image_folder_mixed_sizes_need_size(tmp_path: Path) -> None:
    write(tmp_path / "a" / "0.png", png_bytes(0, (6, 5)))
    write(tmp_path / "b" / "0.png", png_bytes(0, (8, 8)))
    with pytest.raises(DataError, match=r"differ in size.*size=\(height, width\)"):
        load_image_folder(tmp_path)
    ds = load_image_folder(tmp_path, size=(4, 3))
    assert ds.images.shape == (2, 4, 3)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a/x.png": None, "b/readme.txt": b"no images"}, r"class folder .*b has no images"),
        ({"x.png": None}, "directly inside it"),
        ({"notes.txt": b"hi"}, "no class subfolders"),
        ({"Greek/character01/0.png": None}, "use load_omniglot"),
        ({"a/broken.png": b"\x89PNG\r\n\x1a\n garbage"}, r"cannot read image .*broken\.png"),
    ],
)
def test_image_folder_bad_layouts(
    tmp_path: Path, files: dict[str, bytes | None], message: str
) -> None:
    for name, data in files.items():
        write(tmp_path / name, png_bytes(0) if data is None else data)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path)


def test_image_folder_truncated_png(tmp_path: Path) -> None:
    write(tmp_path / "a" / "cut.png", png_bytes(0, (64, 64))[:40])
    with pytest.raises(DataError, match="cut.png"):
        load_image_folder(tmp_path)


def test_image_folder_missing_or_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    write(tmp_path / "f.zip", b"")
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(tmp_path / "f.zip")


# --------------------------------------------------------------------------- Omniglot layout


def omniglot_members(
    top: str, alphabets: dict[str, int], per_char: int = 2, base: int = 0
) -> dict[str, bytes]:
    """Members ``top/alphabet/characterNN/k.png``; gray level encodes (alphabet, char, k)."""
    members = {}
    for a, (alphabet, n_chars) in enumerate(sorted(alphabets.items())):
        for c in range(1, n_chars + 1):
            for k in range(per_char):
                members[f"{top}{alphabet}/character{c:02d}/{k:02d}.png"] = png_bytes(
                    base + 40 * a + 10 * c + k
                )
    return members


def test_omniglot_zip_with_top_folder_and_dedup(tmp_path: Path) -> None:
    z1 = make_zip(tmp_path / "one.zip", omniglot_members("one/", {"Greek": 2, "Balinese": 1}))
    # Greek again, with other pixel values: the first source must win.
    z2 = make_zip(tmp_path / "two.zip", omniglot_members("", {"Greek": 3, "Aramaic": 1}, base=3))
    ds = load_omniglot([z1, z2])
    assert ds.class_names == (
        "Aramaic/character01",
        "Balinese/character01",
        "Greek/character01",
        "Greek/character02",
    )
    assert ds.class_groups == ("Aramaic", "Balinese", "Greek", "Greek")
    assert ds.groups() == ["Aramaic", "Balinese", "Greek"]
    greek = ds.images[ds.labels == 2][:, 0, 0].tolist()
    assert greek == [40 + 10, 40 + 11]  # from one.zip (sorted alphabets: Balinese=0, Greek=1)
    assert ds.name == "one+two"
    assert load_omniglot(z1).num_classes == 3  # a single path works too


def test_omniglot_folder_equals_zip(tmp_path: Path) -> None:
    members = omniglot_members("", {"Latin": 2})
    for name, data in members.items():
        write(tmp_path / "folder" / name, data)
    from_dir = load_omniglot(tmp_path / "folder")
    from_zip = load_omniglot(make_zip(tmp_path / "l.zip", members))
    assert from_dir.class_names == from_zip.class_names
    assert np.array_equal(from_dir.images, from_zip.images)
    assert from_dir.images.shape == (4, 5, 6)


def test_omniglot_resize(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "o.zip", omniglot_members("top/", {"Greek": 1}))
    assert load_omniglot(z, size=(28, 28)).images.shape == (2, 28, 28)


@pytest.mark.parametrize(
    "members, message",
    [
        ({"Greek/x.png": b""}, "not laid out as"),
        ({"t/Greek/c1/0.png": b"", "t/Greek/c1/sub/0.png": b""}, "not laid out as"),
        ({"a/Greek/c1/0.png": b"", "b/Latin/c1/0.png": b""}, "several top-level folders"),
        ({"readme.txt": b"hello"}, "holds no images"),
        ({"Greek/c1/0.png": None, "Greek/c2/": b""}, r"Greek/c2 .*has no images"),
        ({"Greek/c1/0.png": b"not a png"}, r"cannot read image .*Greek/c1/0\.png"),
    ],
)
def test_omniglot_bad_zips(tmp_path: Path, members: dict[str, bytes | None], message: str) -> None:
    z = make_zip(
        tmp_path / "bad.zip", {k: png_bytes(0) if v is None else v for k, v in members.items()}
    )
    with pytest.raises(DataError, match=message):
        load_omniglot(z)


def test_omniglot_missing_and_not_zip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_omniglot(tmp_path / "missing.zip")
    write(tmp_path / "fake.zip", b"this is not a zip")
    with pytest.raises(DataError, match="readable .zip"):
        load_omniglot(tmp_path / "fake.zip")
    with pytest.raises(DataError, match="at least one source"):
        load_omniglot([])


# --------------------------------------------------------------------------- real Omniglot


def test_real_omniglot_zips(omniglot: ImageClassDataset) -> None:
    ds = omniglot
    assert ds.num_classes == 242 and len(ds) == 242 * 20
    assert ds.groups() == [
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Japanese_(katakana)",
        "Korean",
        "Latin",
        "Sanskrit",
        "Tagalog",
    ]
    assert ds.images.shape == (4840, 105, 105) and ds.images.dtype == np.uint8
    assert ds.class_counts().tolist() == [20] * 242
    assert len(set(ds.class_names)) == 242
    assert sum(g == "Greek" for g in ds.class_groups) == 24
    assert sum(g == "Latin" for g in ds.class_groups) == 26
    # Black ink on white: mostly white, some pure black.
    assert ds.images.min() == 0 and np.median(ds.images) == 255
    assert ds.class_names[0] == "Balinese/character01"


def test_real_omniglot_single_zip_and_order(
    omniglot_zips: list[Path], omniglot: ImageClassDataset
) -> None:
    second = load_omniglot(omniglot_zips[1])
    assert second.num_classes == 156  # 24 Greek + 26 Latin + 106 others
    # The same alphabet from the other zip is byte-identical, so dedup loses nothing.
    greek = [i for i, n in enumerate(second.class_names) if n.startswith("Greek/")]
    sub = second.subset_classes(greek)
    ref = omniglot.subset_classes(
        [i for i, n in enumerate(omniglot.class_names) if n.startswith("Greek/")]
    )
    assert np.array_equal(sub.images, ref.images)
