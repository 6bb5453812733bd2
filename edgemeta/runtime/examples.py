"""Enrollment examples kept on the board, so that a model update can re-learn every class.

Prototypes live in one model's embedding space and mean nothing to another model. To carry what
the board learned across an update, the board keeps a bounded sample of the preprocessed images
it enrolled (uint8, exactly what the network saw) and re-embeds them with the new model before
switching to it (:func:`reembed`).

The images are stored as pixels at the model's input size before scaling and inversion, so a new
model with other ``scale``/``invert`` settings (or another size: they are resized) still reads
them correctly.

The bound: at most :data:`MAX_PER_CLASS` images per class and :data:`MAX_BYTES` in all (about
10,000 images of 28x28). Beyond :data:`MAX_PER_CLASS`, each class keeps a uniform random sample
of everything it was ever shown (reservoir sampling), so a re-learned prototype is the mean of a
representative sample rather than of only the first or the last examples. When the total bound
is reached, the class holding the most images gives one up.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, NamedTuple, TypedDict

import numpy as np

from edgemeta.bundle import Preprocessing
from edgemeta.errors import InputError

__all__ = ["MAX_BYTES", "MAX_PER_CLASS", "ExampleBank", "Reembedded", "from_uint8", "reembed",
           "to_uint8"]

MAX_PER_CLASS = 32
MAX_BYTES = 8 * 1024 * 1024


def to_uint8(x: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Undo the scaling and inversion of preprocessed images: their uint8 pixels (lossless)."""
    pixels = np.asarray(x, dtype=np.float32) / np.float32(spec.scale)
    if spec.invert:
        pixels = np.float32(255.0) - pixels
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The inverse of :func:`to_uint8`: the float network input ``spec`` describes."""
    out = np.asarray(pixels, dtype=np.float32) * np.float32(spec.scale)
    if spec.invert:
        out = np.float32(255.0 * spec.scale) - out
    return out


class ExampleArrays(TypedDict):
    """The arrays of :meth:`ExampleBank.to_arrays`, as named in the state ``.npz``."""

    ex_labels: np.ndarray
    ex_seen: np.ndarray
    ex_index: np.ndarray
    ex_images: np.ndarray


class ExampleBank:
    """A bounded, per-class sample of enrolled images (uint8, shape (H, W, C) each)."""

    def __init__(self, max_per_class: int = MAX_PER_CLASS, max_bytes: int = MAX_BYTES) -> None:
        self.max_per_class = max_per_class
        self.max_bytes = max_bytes
        self._images: dict[str, list[np.ndarray]] = {}
        self._seen: dict[str, int] = {}
        # Per-class sample size, lowered for a class that gave images up to the total bound, so
        # its sample stays uniform instead of filling up again with the newest images.
        self._cap: dict[str, int] = {}

    @property
    def labels(self) -> list[str]:
        return list(self._images)

    def images(self, label: str) -> np.ndarray:
        """The kept images of ``label`` as one (n, H, W, C) uint8 array."""
        return np.stack(self._images[label])

    def seen(self, label: str) -> int:
        """How many images of ``label`` were ever added (kept or not)."""
        return self._seen.get(label, 0)

    @property
    def nbytes(self) -> int:
        return sum(im.nbytes for ims in self._images.values() for im in ims)

    def add(self, label: str, images: np.ndarray) -> None:
        """Offer a batch of uint8 images (n, H, W, C) of ``label`` to the sample."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise InputError(f"examples must be a uint8 batch (n, H, W, C), got {images.dtype} "
                             f"{images.shape}")
        kept = self._images.setdefault(label, [])
        if kept and kept[0].shape != images.shape[1:]:
            raise InputError(f"examples of {label!r} are {kept[0].shape}, got {images.shape[1:]}")
        for image in images:
            n = self._seen.get(label, 0)
            self._seen[label] = n + 1
            cap = self._cap.get(label, self.max_per_class)
            if len(kept) < cap:
                kept.append(image.copy())
                continue
            # Reservoir sampling (Algorithm R), seeded per label and position so the kept sample
            # does not depend on process restarts.
            j = int(np.random.default_rng([zlib.crc32(label.encode()), n]).integers(0, n + 1))
            if j < len(kept):
                kept[j] = image.copy()
        self._shrink()

    def _shrink(self) -> None:
        while self.nbytes > self.max_bytes:
            largest = max(self._images, key=lambda k: len(self._images[k]))
            if len(self._images[largest]) <= 1:
                break
            self._images[largest].pop()
            self._cap[largest] = len(self._images[largest])

    def put(self, label: str, images: np.ndarray, seen: int) -> None:
        """Replace ``label``'s sample with ``images`` (already a sample of ``seen`` images)."""
        self.forget(label)
        self._images[label] = [im.copy() for im in np.asarray(images, dtype=np.uint8)]
        self._seen[label] = max(int(seen), len(self._images[label]))
        self._shrink()

    def forget(self, label: str) -> None:
        self._images.pop(label, None)
        self._seen.pop(label, None)
        self._cap.pop(label, None)

    def to_arrays(self) -> ExampleArrays:
        """Arrays for an ``.npz`` (no pickle): images, their label index, labels and seen counts."""
        labels = [k for k in self._images if self._images[k]]
        if not labels:
            return {"ex_labels": np.zeros((0,), dtype="<U1"), "ex_seen": np.zeros((0,), np.int64),
                    "ex_index": np.zeros((0,), np.int64),
                    "ex_images": np.zeros((0, 1, 1, 1), np.uint8)}
        return {
            "ex_labels": np.array(labels, dtype=np.str_),
            "ex_seen": np.array([self._seen[k] for k in labels], dtype=np.int64),
            "ex_index": np.concatenate([np.full(len(self._images[k]), i, np.int64)
                                        for i, k in enumerate(labels)]),
            "ex_images": np.stack([im for k in labels for im in self._images[k]]),
        }

    @classmethod
    def from_arrays(cls, data: Any, max_per_class: int = MAX_PER_CLASS,
                    max_bytes: int = MAX_BYTES) -> "ExampleBank":
        """Rebuild from :meth:`to_arrays` output (missing keys: an empty bank)."""
        bank = cls(max_per_class, max_bytes)
        if "ex_labels" not in data:
            return bank
        labels = [str(x) for x in np.atleast_1d(data["ex_labels"])]
        seen = np.asarray(data["ex_seen"], dtype=np.int64)
        index = np.asarray(data["ex_index"], dtype=np.int64)
        images = np.asarray(data["ex_images"])
        if (len(seen) != len(labels) or len(index) != len(images) or images.dtype != np.uint8
                or images.ndim != 4 or len(set(labels)) != len(labels)
                or (len(index) and (index.min() < 0 or index.max() >= len(labels)))):
            raise ValueError("stored examples are inconsistent")
        for i, label in enumerate(labels):
            kept = [im for im in images[index == i]]
            if not kept:  # an empty sample would break images(); the class has none to keep
                continue
            bank._images[label] = kept
            bank._seen[label] = int(seen[i])
        return bank


class Reembedded(NamedTuple):
    """What :func:`reembed` produced for another model."""

    means: dict[str, np.ndarray]  # label -> mean embedding in the new model's space
    images: dict[str, np.ndarray]  # label -> the kept images at the new model's input size
    skipped: list[str]  # labels stored with another number of channels


def reembed(bank: ExampleBank, embed: Callable[[np.ndarray], np.ndarray],
            spec: Preprocessing) -> Reembedded:
    """Embed every class's kept examples with another model.

    Args:
        bank: The examples.
        embed: The new model's embedding function over preprocessed batches (n, H, W, C).
        spec: The new model's preprocessing; examples of another size are resized (bilinear),
            and returned at that size so that later enrollments with the new model match them.
    """
    from PIL import Image  # the runtime already depends on Pillow for preprocessing

    size, channels = tuple(spec.size), spec.channels
    out = Reembedded({}, {}, [])
    for label in bank.labels:
        images = bank.images(label)
        if images.shape[-1] != channels:
            out.skipped.append(label)
            continue
        if images.shape[1:3] != size:
            images = np.stack([
                np.asarray(Image.fromarray(im.squeeze(-1) if channels == 1 else im)
                           .resize((size[1], size[0]), Image.Resampling.BILINEAR))
                .reshape(*size, channels)
                for im in images])
        out.means[label] = embed(from_uint8(images, spec)).astype(np.float64).mean(axis=0) \
            .astype(np.float32)
        out.images[label] = images
    return out
