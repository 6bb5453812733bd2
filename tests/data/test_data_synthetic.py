"""make_glyph_dataset (determinism, look, difficulty) and write_image_folder round trips."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemeta.data import (
    ImageClassDataset,
    load_image_folder,
    make_glyph_dataset,
    safe_class_dirname,
    write_image_folder,
)
from edgemeta.errors import DataError

HASH_SNIPPET = (
    "import hashlib; from edgemeta.data import make_glyph_dataset; "
    "print(hashlib.sha256(make_glyph_dataset(12, 5, 32, seed=7).images.tobytes()).hexdigest())"
)


def digest(ds: ImageClassDataset) -> str:
    return hashlib.sha256(ds.images.tobytes()).hexdigest()


def test_shape_dtype_names(glyphs: ImageClassDataset) -> None:
    assert glyphs.images.shape == (240, 28, 28) and glyphs.images.dtype == np.uint8
    assert glyphs.labels.tolist() == np.repeat(np.arange(30), 8).tolist()
    assert glyphs.class_names[0] == "glyph0000" and glyphs.class_groups == ("",) * 30
    assert glyphs.name == "synthetic-glyphs"


def test_ink_polarity_and_antialiasing(glyphs: ImageClassDataset) -> None:
    images = glyphs.images
    assert np.median(images) == 255  # white background
    border = np.concatenate(
        [images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1
    )
    assert border.mean() > 250
    ink = (images < 128).mean(axis=(1, 2))
    assert ink.min() > 0.01 and ink.max() < 0.4  # every drawing has some ink, none is a blob
    assert (images.min(axis=(1, 2)) < 60).all()  # dark ink
    grey = ((images > 20) & (images < 235)).sum(axis=(1, 2))
    assert (grey > 0).all()  # anti-aliased edges, not a binary image


def test_byte_identical_across_runs() -> None:
    first = make_glyph_dataset(12, 5, 32, seed=7)
    assert digest(first) == digest(make_glyph_dataset(12, 5, 32, seed=7))
    # A fresh interpreter (other hash seed) must produce the very same bytes.
    out = subprocess.run(
        [sys.executable, "-c", HASH_SNIPPET],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == digest(first)
    assert digest(make_glyph_dataset(12, 5, 32, seed=8)) != digest(first)


def test_prefix_stability() -> None:
    big = make_glyph_dataset(6, 4, 28, seed=1)
    small = make_glyph_dataset(3, 2, 28, seed=1)
    # Class c and drawing j do not depend on how many classes/drawings were asked for.
    assert np.array_equal(
        small.images.reshape(3, 2, 28, 28), big.images.reshape(6, 4, 28, 28)[:3, :2]
    )


def test_classes_differ_more_than_drawings(glyphs: ImageClassDataset) -> None:
    x = 1.0 - glyphs.images.reshape(30, 8, -1).astype(np.float64) / 255.0
    means = x.mean(axis=1)
    within = np.mean([np.linalg.norm(x[c] - means[c], axis=1).mean() for c in range(30)])
    between = np.mean(
        [np.linalg.norm(x[c] - means[(c + 1) % 30], axis=1).mean() for c in range(30)]
    )
    assert between > 1.15 * within
    # ...but the drawings of a class are not copies of each other.
    assert all(
        len({row.tobytes() for row in glyphs.images[c * 8 : (c + 1) * 8]}) == 8 for c in range(30)
    )


def test_raw_pixel_nearest_neighbour_is_far_from_perfect(glyphs: ImageClassDataset) -> None:
    # 5-way 1-shot raw-pixel 1-NN: clearly above chance (20 %) but nowhere near solved.
    x = 1.0 - glyphs.images.reshape(len(glyphs), -1).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(200):
        classes = rng.choice(30, 5, replace=False)
        picks = np.stack([c * 8 + rng.choice(8, 6, replace=False) for c in classes])
        support, query = x[picks[:, 0]], x[picks[:, 1:].ravel()]
        pred = ((query[:, None] - support[None]) ** 2).sum(-1).argmin(1)
        hits.append(pred == np.repeat(np.arange(5), 5))
    acc = float(np.mean(hits))
    assert 0.35 < acc < 0.85, acc


@pytest.mark.parametrize(
    "kwargs", [{"n_classes": 0}, {"per_class": 0}, {"size": 4}, {"n_classes": 2.5}]
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError, match="make_glyph_dataset"):
        make_glyph_dataset(**kwargs)


def test_write_image_folder_round_trip(tmp_path: Path, glyphs: ImageClassDataset) -> None:
    out = write_image_folder(glyphs, tmp_path / "inbox")
    assert out == tmp_path / "inbox"
    back = load_image_folder(out)
    assert back.class_names == glyphs.class_names
    assert np.array_equal(back.images, glyphs.images) and np.array_equal(back.labels, glyphs.labels)


def test_write_image_folder_subset_and_safe_names(tmp_path: Path) -> None:
    images = np.full((4, 5, 5), 200, np.uint8)
    images[:, 0, 0] = [1, 2, 3, 4]
    names = ("Greek/character01@90", "../evil", "a:b", "A:b")
    ds = ImageClassDataset(images, np.arange(4), names, ("",) * 4)
    write_image_folder(ds, tmp_path, indices=[3, 0, 1, 2])
    # "/" and ".." can't escape out_dir; names colliding (even by case only) get a suffix.
    assert {p.name for p in tmp_path.iterdir()} == {
        "Greek__character01@90",
        "_.__evil",
        "a_b",
        "A_b-1",
    }
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for p in tmp_path.rglob("*"))
    assert (tmp_path / "Greek__character01@90" / "0.png").is_file()
    write_image_folder(ds, tmp_path / "two", indices=np.array([2]))
    assert [
        p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*.png")
    ] == ["a_b/2.png"]
    assert safe_class_dirname(".hidden") == "_hidden"
    with pytest.raises(DataError, match="out of range"):
        write_image_folder(ds, tmp_path / "x", indices=[4])
    assert not (tmp_path / "x").exists()
