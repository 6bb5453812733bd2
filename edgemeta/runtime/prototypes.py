"""Class prototypes: the running mean of each class's embeddings (no backprop on the board).

``compute_prototypes`` and ``classify_embeddings`` are pure functions; ``PrototypeStore`` is the
thin stateful layer that updates means incrementally and persists them crash-safely.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.errors import InputError, StateError
from edgemeta.runtime.examples import ExampleBank

__all__ = ["Prediction", "compute_prototypes", "l2_normalize", "pairwise_distances", "classify_embeddings",
           "PrototypeStore"]

_STATE_SCHEMA = 1


class Prediction(NamedTuple):
    """A classification: the nearest prototype's label and its softmax probability."""

    label: str
    score: float


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (rows of zeros stay zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def compute_prototypes(embeddings: np.ndarray, labels: Sequence[str] | np.ndarray
                       ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean embedding per label.

    Returns:
        ``(labels, means, counts)`` with labels in first-seen order, means (K, D) float32 and
        counts (K,) int64.
    """
    labels = [str(x) for x in labels]
    if len(labels) != len(embeddings):
        raise InputError(f"{len(embeddings)} embeddings but {len(labels)} labels; expected as many")
    order = list(dict.fromkeys(labels))
    index = {label: i for i, label in enumerate(order)}
    ids = np.array([index[x] for x in labels], dtype=np.int64)
    counts = np.bincount(ids, minlength=len(order)).astype(np.int64)
    sums = np.zeros((len(order), embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, ids, embeddings.astype(np.float64))
    return order, (sums / counts[:, None]).astype(np.float32), counts


def pairwise_distances(queries: np.ndarray, prototypes: np.ndarray, metric: str) -> np.ndarray:
    """Distances (N, K) between queries (N, D) and prototypes (K, D)."""
    if metric == "cosine":
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        p = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        return 1.0 - q @ p.T
    sq = (np.sum(queries ** 2, axis=1)[:, None] - 2.0 * queries @ prototypes.T
          + np.sum(prototypes ** 2, axis=1)[None, :])
    return np.maximum(sq, 0.0)


def classify_embeddings(queries: np.ndarray, labels: Sequence[str], prototypes: np.ndarray,
                        metric: str = "squared_euclidean") -> list[Prediction]:
    """Nearest-prototype predictions with a softmax over negative distances as the score."""
    if len(labels) == 0:
        raise InputError("no classes are enrolled; enroll at least one class before classifying")
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != prototypes.shape[1]:
        raise InputError(f"query embeddings have shape {queries.shape}; expected "
                         f"(N, {prototypes.shape[1]}) like the prototypes")
    d = pairwise_distances(queries.astype(np.float32), prototypes, metric)
    logits = -d - np.max(-d, axis=1, keepdims=True)
    probs = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
    best = np.argmax(probs, axis=1)
    return [Prediction(labels[int(b)], float(probs[i, b])) for i, b in enumerate(best)]


class PrototypeStore:
    """Per-label running means, tied to one model (by its SHA-256).

    ``examples`` holds a bounded sample of the images behind each mean (see
    :mod:`edgemeta.runtime.examples`); it is saved in the same file, so the two never disagree
    after a crash, and a model update re-learns the classes from it.
    """

    def __init__(self, embedding_dim: int, model_sha256: str, metric: str = "squared_euclidean"):
        self.embedding_dim = embedding_dim
        self.model_sha256 = model_sha256
        self.metric = metric
        self._means: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self.examples = ExampleBank()

    @property
    def labels(self) -> list[str]:
        return list(self._means)

    def count(self, label: str) -> int:
        return self._counts.get(label, 0)

    def mean(self, label: str) -> np.ndarray:
        """The prototype of ``label`` (a copy)."""
        if label not in self._means:
            raise InputError(f"label {label!r} is not enrolled; enrolled: {self.labels}")
        return self._means[label].copy()

    @staticmethod
    def validate_label(label: object) -> str:
        """Return ``label`` if it is a usable class name, else raise InputError."""
        if not isinstance(label, str) or not label.strip() or len(label) > 200:
            raise InputError(f"a label must be a non-empty string of at most 200 characters, "
                             f"got {label!r}")
        # A label must survive save and load unchanged: numpy drops trailing NULs from saved
        # strings (so "a\x00" would come back as "a", colliding with "a" and making the whole
        # state file unreadable), and a lone surrogate cannot be encoded at all.
        if "\x00" in label or any("\ud800" <= c <= "\udfff" for c in label):
            raise InputError(f"a label must not contain NUL characters or lone surrogates, "
                             f"got {label!r}")
        return label

    def update(self, label: str, embeddings: np.ndarray) -> None:
        """Fold new embeddings of ``label`` into its mean: m' = m + (sum(x) - n_new m) / (n + n_new)."""
        self.validate_label(label)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim or len(embeddings) == 0:
            raise InputError(
                f"embeddings for {label!r} have shape {embeddings.shape}; "
                f"expected (n >= 1, {self.embedding_dim})"
            )
        n_old = self._counts.get(label, 0)
        n_new = len(embeddings)
        mean = self._means.get(label, np.zeros(self.embedding_dim, dtype=np.float64)).astype(np.float64)
        mean = mean + (embeddings.astype(np.float64).sum(axis=0) - n_new * mean) / (n_old + n_new)
        self._means[label] = mean.astype(np.float32)
        self._counts[label] = n_old + n_new

    def set_prototype(self, label: str, mean: np.ndarray, count: int) -> None:
        """Set a label's mean and the number of examples it stands for (used when re-learning)."""
        self.validate_label(label)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.shape != (self.embedding_dim,) or count < 1:
            raise InputError(f"prototype for {label!r} has shape {mean.shape} and count {count}; "
                             f"expected ({self.embedding_dim},) and a count >= 1")
        self._means[label] = mean
        self._counts[label] = int(count)

    def forget(self, label: str) -> None:
        if label not in self._means:
            raise InputError(f"label {label!r} is not enrolled; enrolled: {self.labels}")
        del self._means[label]
        del self._counts[label]
        self.examples.forget(label)

    def classify(self, embeddings: np.ndarray) -> list[Prediction]:
        labels = self.labels
        protos = np.stack([self._means[x] for x in labels]) if labels else np.zeros((0, 0))
        return classify_embeddings(embeddings, labels, protos, self.metric)

    def to_bytes(self) -> bytes:
        labels = self.labels
        buf = io.BytesIO()
        np.savez(
            buf,
            schema=np.array(_STATE_SCHEMA),
            model_sha256=np.array(self.model_sha256),
            labels=np.array(labels, dtype=np.str_) if labels else np.zeros((0,), dtype="<U1"),
            means=(np.stack([self._means[x] for x in labels]) if labels
                   else np.zeros((0, self.embedding_dim), dtype=np.float32)),
            counts=np.array([self._counts[x] for x in labels], dtype=np.int64),
            **self.examples.to_arrays(),
        )
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Persist atomically (temp file, fsync, rename): a kill at any moment leaves old or new.

        Raises:
            StateError: the file could not be written (a full disk, a read-only card); the
                previous file is unchanged and no temporary file is left behind.
        """
        out = Path(path)
        try:
            atomic_write_bytes(out, self.to_bytes())
        except OSError as exc:  # a full disk, a read-only card: the old file is still intact
            raise StateError(f"cannot save prototype state to {out}: {exc}; the previous state "
                             "file is unchanged") from exc
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], metric: str = "squared_euclidean") -> "PrototypeStore":
        """Load a saved store.

        Raises:
            StateError: the file is not a prototype store this edgemeta can read.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                schema = int(data["schema"])
                sha = str(data["model_sha256"])
                labels = [str(x) for x in np.atleast_1d(data["labels"])]
                means = np.asarray(data["means"], dtype=np.float32)
                counts = np.asarray(data["counts"], dtype=np.int64)
                examples = ExampleBank.from_arrays(data)
        except Exception as exc:  # np.load raises many types (BadZipFile, TypeError, ...)
            raise StateError(f"prototype state {path} is unreadable ({exc.__class__.__name__}: "
                             f"{exc}); expected a file written by PrototypeStore.save") from exc
        if (schema != _STATE_SCHEMA or means.ndim != 2 or counts.ndim != 1
                or len({len(means), len(labels), len(counts)}) != 1 or len(set(labels)) != len(labels)
                or (counts < 1).any() or means.shape[1] < 1):
            raise StateError(f"prototype state {path} is inconsistent (schema {schema}, "
                             f"{len(labels)} labels, means {means.shape}, counts {counts.shape}); "
                             f"expected schema {_STATE_SCHEMA} with one mean and count per label")
        if not np.isfinite(means).all():
            # A NaN prototype would make every prediction's score NaN, silently.
            raise StateError(f"prototype state {path} holds non-finite prototype values; "
                             "expected a file written by PrototypeStore.save")
        # Only what save never wrote is refused here; a label that older releases accepted
        # (validate_label has since tightened) must not get a whole state file set aside.
        bad = [x for x in labels if not x.strip() or len(x) > 200]
        if bad:
            raise StateError(f"prototype state {path} holds invalid labels {bad[:3]!r}; expected "
                             "non-empty labels of at most 200 characters")
        store = cls(means.shape[1], sha, metric)
        for label, mean, count in zip(labels, means, counts):
            store._means[label] = mean
            store._counts[label] = int(count)
        for label in examples.labels:
            if label not in store._means:  # examples of a forgotten class never come back
                examples.forget(label)
        store.examples = examples
        return store
