"""An in-memory labelled image dataset: the one type every loader returns and every sampler takes.

Images live in a single uint8 array so that episode batches are one fancy-indexing operation,
and classes carry a *group* (the Omniglot alphabet) because few-shot benchmarks split and sample
by alphabet, not only by class.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgemeta.errors import DataError

__all__ = ["ImageClassDataset"]


def _readonly(array: np.ndarray) -> np.ndarray:
    # A read-only *view* protects the cached per-class indices from in-place edits without
    # copying the data and without changing the flags of the caller's own array.
    view = array.view()
    view.flags.writeable = False
    return view


def _as_int(value: object, what: str) -> int:
    # bool is an Integral, but ``split_classes(True)`` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False, repr=False)
class ImageClassDataset:
    """Images with integer class labels, class names and one group (e.g. alphabet) per class.

    Attributes:
        images: uint8 array, ``(N, H, W)`` for grayscale or ``(N, H, W, C)``; one size for all.
        labels: int64 array ``(N,)`` with values in ``0 .. num_classes - 1``.
        class_names: One unique name per class, e.g. ``"Greek/character01"``.
        class_groups: One group per class (the alphabet for Omniglot, ``""`` when there is none).
        name: A short human-readable name, recorded in training provenance.

    Every class must have at least one image. The arrays are exposed as read-only views.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]
    name: str = "dataset"

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.dtype != np.uint8:
            raise DataError(f"dataset images must be uint8, got dtype {images.dtype}")
        if images.ndim not in (3, 4) or min(images.shape[1:], default=0) < 1:
            raise DataError(
                f"dataset images must have shape (N, H, W) or (N, H, W, C), got {images.shape}"
            )
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "iu":
            raise DataError(f"dataset labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"dataset labels must have shape ({images.shape[0]},) to match the images, "
                f"got {labels.shape}"
            )
        names = tuple(str(n) for n in self.class_names)
        groups = tuple(str(g) for g in self.class_groups)
        if len(groups) != len(names):
            raise DataError(
                f"dataset needs one class group per class: {len(names)} class names but "
                f"{len(groups)} class groups"
            )
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise DataError(f"dataset class names must be unique; {dup!r} appears more than once")
        labels = labels.astype(np.int64, copy=False)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"dataset labels must lie in 0..{len(names) - 1} (one per class name), "
                f"got values {labels.min()}..{labels.max()}"
            )
        counts = np.bincount(labels, minlength=len(names))
        if len(names) == 0 or (counts == 0).any():
            empty = [names[i] for i in np.flatnonzero(counts == 0)[:3]] if names else []
            raise DataError(
                f"every class of a dataset needs at least one image; empty: {empty or 'no classes'}"
            )
        object.__setattr__(self, "images", _readonly(images))
        object.__setattr__(self, "labels", _readonly(labels))
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "class_groups", groups)
        object.__setattr__(self, "name", str(self.name))

    def __repr__(self) -> str:
        return (
            f"ImageClassDataset(name={self.name!r}, images={len(self)}x"
            f"{'x'.join(map(str, self.image_shape))}, classes={self.num_classes}, "
            f"groups={len(self.groups())})"
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image: ``(H, W)`` or ``(H, W, C)``."""
        return tuple(int(d) for d in self.images.shape[1:])

    @cached_property
    def _class_indices(self) -> tuple[np.ndarray, ...]:
        # cached_property writes straight into __dict__, so it works on a frozen dataclass;
        # the labels are read-only, so the cache can never go stale.
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return tuple(_readonly(part) for part in np.split(order, np.cumsum(counts)[:-1]))

    def indices_by_class(self) -> list[np.ndarray]:
        """Dataset indices of each class, ascending.

        Returns:
            A list with one read-only int64 array per class (computed once, then cached).
        """
        return list(self._class_indices)

    def class_counts(self) -> np.ndarray:
        """Number of images of each class, int64 ``(num_classes,)``."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def groups(self) -> list[str]:
        """The distinct class groups in order of first appearance."""
        return list(dict.fromkeys(self.class_groups))

    def subset_classes(self, class_ids: Sequence[int] | np.ndarray) -> ImageClassDataset:
        """A dataset holding only some classes, relabelled ``0 .. k-1``.

        Args:
            class_ids: Distinct class ids; new label ``j`` is old class ``class_ids[j]``.
                Images keep their relative order.

        Returns:
            A new dataset with ``len(class_ids)`` classes.

        Raises:
            DataError: If ``class_ids`` is empty, repeats a class or names an unknown class.
        """
        ids = [_as_int(c, "class id") for c in np.asarray(class_ids).ravel().tolist()]
        if not ids:
            raise DataError("subset_classes needs at least one class id, got none")
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad:
            raise DataError(
                f"class ids {bad[:5]} are out of range; expected 0..{self.num_classes - 1}"
            )
        if len(set(ids)) != len(ids):
            raise DataError(f"subset_classes got repeated class ids: {ids}")
        new_label = np.full(self.num_classes, -1, dtype=np.int64)
        new_label[ids] = np.arange(len(ids))
        mapped = new_label[self.labels]
        keep = mapped >= 0
        return ImageClassDataset(
            images=self.images[keep],
            labels=mapped[keep],
            class_names=tuple(self.class_names[c] for c in ids),
            class_groups=tuple(self.class_groups[c] for c in ids),
            name=self.name,
        )

    def split_classes(
        self, n_train: int | float, seed: int = 0
    ) -> tuple[ImageClassDataset, ImageClassDataset]:
        """Randomly split the classes into disjoint train and test datasets.

        Args:
            n_train: Number of training classes (int), or their fraction in ``(0, 1)`` (float,
                rounded to the nearest count).
            seed: Seed of the random split.

        Returns:
            ``(train, test)``; each keeps the original relative class order.

        Raises:
            DataError: If either side would be empty.
        """
        if isinstance(n_train, float):
            if not 0.0 < n_train < 1.0:
                raise DataError(f"a fractional n_train must be in (0, 1), got {n_train}")
            count = int(round(n_train * self.num_classes))
        else:
            count = _as_int(n_train, "n_train")
        if not 1 <= count <= self.num_classes - 1:
            raise DataError(
                f"split_classes needs 1..{self.num_classes - 1} training classes so that both "
                f"sides are non-empty; got {count} of {self.num_classes} classes"
            )
        perm = np.random.default_rng(seed).permutation(self.num_classes)
        train_ids = np.sort(perm[:count])
        test_ids = np.sort(perm[count:])
        return (
            self.subset_classes(train_ids).renamed(f"{self.name}[train]"),
            self.subset_classes(test_ids).renamed(f"{self.name}[test]"),
        )

    def split_groups(
        self, test_groups: Sequence[str]
    ) -> tuple[ImageClassDataset, ImageClassDataset]:
        """Split by group (alphabet): every class of ``test_groups`` goes to the test side.

        Args:
            test_groups: Names of the groups held out for testing.

        Returns:
            ``(train, test)``; each keeps the original relative class order.

        Raises:
            DataError: On an unknown group, or if either side would be empty.
        """
        if isinstance(test_groups, str):
            test_groups = [test_groups]  # one alphabet, not a sequence of letters
        wanted = set(test_groups)
        known = set(self.class_groups)
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"unknown groups {unknown}; the dataset has groups {self.groups()}")
        test_ids = [c for c, g in enumerate(self.class_groups) if g in wanted]
        train_ids = [c for c, g in enumerate(self.class_groups) if g not in wanted]
        if not test_ids or not train_ids:
            raise DataError(
                f"split_groups({sorted(wanted)}) leaves an empty side: {len(train_ids)} train "
                f"and {len(test_ids)} test classes; hold out some but not all of {self.groups()}"
            )
        return (
            self.subset_classes(train_ids).renamed(f"{self.name}[train]"),
            self.subset_classes(test_ids).renamed(f"{self.name}[test]"),
        )

    def with_rotations(self, angles: Sequence[int] = (90, 180, 270)) -> ImageClassDataset:
        """Add each rotation of each class as a new class (Snell et al. 2017).

        Class ``c`` keeps label ``c``; its rotation by ``angles[r]`` becomes class
        ``(r + 1) * num_classes + c`` named ``"<name>@<angle>"`` in the same group.

        Args:
            angles: Counter-clockwise angles in degrees, multiples of 90 and not of 360.

        Returns:
            A dataset with ``(1 + len(angles)) * num_classes`` classes.

        Raises:
            DataError: On angles that are not distinct non-zero multiples of 90, or on
                90/270 degree rotations of non-square images.
        """
        angles = [_as_int(a, "rotation angle") for a in angles]
        if any(a % 90 or a % 360 == 0 for a in angles) or len({a % 360 for a in angles}) != len(
            angles
        ):
            raise DataError(
                f"rotation angles must be distinct multiples of 90 that are not multiples of "
                f"360 (e.g. (90, 180, 270)), got {angles}"
            )
        h, w = self.images.shape[1:3]
        if h != w and any((a // 90) % 2 for a in angles):
            raise DataError(f"90/270 degree rotations need square images, got {h}x{w}")
        images = [self.images]
        labels = [self.labels]
        names = list(self.class_names)
        for r, angle in enumerate(angles, start=1):
            images.append(np.rot90(self.images, k=(angle // 90) % 4, axes=(1, 2)))
            labels.append(self.labels + r * self.num_classes)
            names.extend(f"{n}@{angle}" for n in self.class_names)
        return ImageClassDataset(
            images=np.ascontiguousarray(np.concatenate(images)),
            labels=np.concatenate(labels),
            class_names=tuple(names),
            class_groups=self.class_groups * (1 + len(angles)),
            name=f"{self.name}+rot",
        )

    def renamed(self, name: str) -> ImageClassDataset:
        """The same data under another ``name`` (arrays are shared, not copied)."""
        return ImageClassDataset(
            self.images, self.labels, self.class_names, self.class_groups, name
        )
