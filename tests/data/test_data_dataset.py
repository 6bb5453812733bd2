"""ImageClassDataset: validation, per-class indices, subsets, splits and rotations."""

from __future__ import annotations

import numpy as np
import pytest

from edgemeta.data import ImageClassDataset
from edgemeta.errors import DataError


def tiny(
    n_classes: int = 4, per_class: int = 3, groups: tuple[str, ...] | None = None
) -> ImageClassDataset:
    """Images whose pixel (0, 0) is the image index and pixel (0, 1) the label."""
    n = n_classes * per_class
    images = np.zeros((n, 4, 4), dtype=np.uint8)
    labels = np.tile(np.arange(n_classes), per_class)  # interleaved on purpose
    images[:, 0, 0] = np.arange(n)
    images[:, 0, 1] = labels
    names = tuple(f"c{i}" for i in range(n_classes))
    return ImageClassDataset(images, labels, names, groups or ("",) * n_classes, "tiny")


def test_basic_properties_and_readonly() -> None:
    ds = tiny()
    assert len(ds) == 12 and ds.num_classes == 4 and ds.image_shape == (4, 4)
    assert ds.labels.dtype == np.int64
    with pytest.raises(ValueError):
        ds.images[0, 0, 0] = 7  # read-only view: the cached indices can't go stale
    assert "classes=4" in repr(ds)


def test_indices_by_class_is_correct_and_cached() -> None:
    ds = tiny()
    idx = ds.indices_by_class()
    assert [i.tolist() for i in idx] == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    assert ds.indices_by_class()[2] is idx[2]
    assert ds.class_counts().tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": np.zeros((2, 4, 4), np.float32)}, "uint8"),
        ({"images": np.zeros((2, 4), np.uint8)}, "shape"),
        ({"labels": np.array([0, 5])}, "0..1"),
        ({"labels": np.array([0])}, "shape"),
        ({"labels": np.array([0, 0])}, "at least one image"),
        ({"class_groups": ("",)}, "one class group per class"),
        ({"class_names": ("a", "a")}, "unique"),
    ],
)
def test_invalid_construction_raises(kwargs: dict, message: str) -> None:
    args = {
        "images": np.zeros((2, 4, 4), np.uint8),
        "labels": np.array([0, 1]),
        "class_names": ("a", "b"),
        "class_groups": ("", ""),
    }
    args.update(kwargs)
    with pytest.raises(DataError, match=message):
        ImageClassDataset(**args)


def test_subset_classes_relabels_in_given_order() -> None:
    ds = tiny()
    sub = ds.subset_classes([3, 1])
    assert sub.class_names == ("c3", "c1") and sub.num_classes == 2
    assert sub.labels.tolist() == [1, 0, 1, 0, 1, 0]  # image order kept: 1, 3, 5, 7, 9, 11
    assert sub.images[:, 0, 0].tolist() == [1, 3, 5, 7, 9, 11]
    assert (sub.images[:, 0, 1] == np.array([3, 1])[sub.labels]).all()
    for bad in ([], [0, 0], [4], [1.5]):
        with pytest.raises(DataError):
            ds.subset_classes(bad)


def test_split_classes_is_random_disjoint_and_seeded() -> None:
    ds = tiny(n_classes=10, per_class=2)
    train, test = ds.split_classes(7, seed=1)
    assert (train.num_classes, test.num_classes) == (7, 3)
    assert set(train.class_names).isdisjoint(test.class_names)
    assert set(train.class_names) | set(test.class_names) == set(ds.class_names)
    assert train.class_names == ds.split_classes(7, seed=1)[0].class_names
    # Different seeds give different splits, so the split really is random.
    assert len({ds.split_classes(7, seed=s)[1].class_names for s in range(6)}) > 1
    assert ds.split_classes(0.5, seed=0)[0].num_classes == 5
    for bad in (0, 10, 1.0, True):
        with pytest.raises(DataError):
            ds.split_classes(bad)


def test_split_groups() -> None:
    ds = tiny(n_classes=4, groups=("Greek", "Greek", "Latin", "Korean"))
    assert ds.groups() == ["Greek", "Latin", "Korean"]
    train, test = ds.split_groups(["Latin", "Korean"])
    assert train.class_names == ("c0", "c1") and test.class_names == ("c2", "c3")
    assert test.class_groups == ("Latin", "Korean")
    assert ds.split_groups("Latin")[1].class_names == ("c2",)  # a bare string is one group
    with pytest.raises(DataError, match="unknown groups"):
        ds.split_groups(["Klingon"])
    with pytest.raises(DataError, match="empty side"):
        ds.split_groups(["Greek", "Latin", "Korean"])


def test_with_rotations_adds_rotated_classes() -> None:
    images = np.zeros((2, 3, 3), np.uint8)
    images[:, 0, 2] = 255  # ink in the top-right corner
    ds = ImageClassDataset(images, np.array([0, 1]), ("Greek/a", "Greek/b"), ("Greek", "Greek"))
    rot = ds.with_rotations()
    assert rot.num_classes == 8 and len(rot) == 8
    assert rot.class_names[:4] == ("Greek/a", "Greek/b", "Greek/a@90", "Greek/b@90")
    assert rot.class_names[-1] == "Greek/b@270" and set(rot.class_groups) == {"Greek"}
    # Counter-clockwise: top-right goes to top-left (90), bottom-left (180), bottom-right (270).
    corners = {
        rot.class_names[int(lab)]: tuple(np.argwhere(im)[0])
        for im, lab in zip(rot.images, rot.labels, strict=True)
    }
    assert corners["Greek/a"] == (0, 2) and corners["Greek/a@90"] == (0, 0)
    assert corners["Greek/a@180"] == (2, 0) and corners["Greek/a@270"] == (2, 2)
    assert ds.with_rotations((180,)).num_classes == 4
    for bad in ((45,), (0,), (90, 450)):
        with pytest.raises(DataError, match="multiples of 90"):
            ds.with_rotations(bad)
    wide = ImageClassDataset(np.zeros((1, 2, 3), np.uint8), np.array([0]), ("x",), ("",))
    with pytest.raises(DataError, match="square"):
        wide.with_rotations()
    assert wide.with_rotations((180,)).image_shape == (2, 3)
