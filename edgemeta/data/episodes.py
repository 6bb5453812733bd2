"""N-way K-shot episode sampling for meta-training and few-shot evaluation.

An episode holds dataset *indices*, not images, so the same sampler serves any preprocessing
and a batch is one fancy-indexing operation on ``dataset.images``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.errors import DataError

__all__ = ["Episode", "EpisodeSampler", "episode_labels", "fit_episode_size"]

# Above this many random keys per episode, sample class by class instead (see _draw_examples).
_VECTORISED_MAX_KEYS = 1 << 16


class Episode(NamedTuple):
    """One few-shot task.

    Attributes:
        classes: Dataset class ids ``(n_way,)``; row ``i`` below belongs to ``classes[i]``,
            which gets episode label ``i``.
        support: Dataset indices ``(n_way, k_shot)``.
        query: Dataset indices ``(n_way, n_query)``, disjoint from ``support``.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def episode_labels(episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """Episode labels ``0 .. n_way-1`` in the episode's class order.

    Args:
        episode: An episode.

    Returns:
        ``(support_labels, query_labels)`` shaped like ``episode.support`` and
        ``episode.query`` (row ``i`` is all ``i``), so ``.ravel()`` on an index array and on
        its labels lines them up.
    """
    n_way = episode.support.shape[0]
    rows = np.arange(n_way, dtype=np.int64)[:, None]
    return (
        np.broadcast_to(rows, episode.support.shape).copy(),
        np.broadcast_to(rows, episode.query.shape).copy(),
    )


def fit_episode_size(dataset: ImageClassDataset, n_way: int, k_shot: int,
                     n_query: int) -> tuple[int, int, int]:
    """The largest episode no larger than asked that every class of ``dataset`` can fill.

    For validation and reports on a user's own (often small) unseen classes: queries shrink
    first, then the way; the shot, which is what gets measured, never does.

    Args:
        dataset: The classes the episodes are drawn from.
        n_way, k_shot, n_query: The episode asked for.

    Returns:
        ``(n_way, k_shot, n_query)``, each at most what was asked.

    Raises:
        DataError: Fewer than 2 classes, or a class without ``k_shot + 1`` examples.
    """
    counts = dataset.class_counts()
    way = min(n_way, dataset.num_classes)
    query = min(n_query, int(counts.min()) - k_shot) if counts.size else 0
    if way < 2 or query < 1:
        raise DataError(f"{dataset.name!r} has {dataset.num_classes} classes with at least "
                        f"{int(counts.min()) if counts.size else 0} examples each; {k_shot}-shot "
                        f"episodes need at least 2 classes with {k_shot + 1} examples each")
    return way, k_shot, query


def _positive(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class EpisodeSampler:
    """Draws reproducible N-way K-shot episodes from an :class:`ImageClassDataset`.

    Classes of an episode are distinct and in random order; within each class the support and
    query examples are drawn together without replacement, so they never overlap.

    Args:
        dataset: The dataset to sample from.
        n_way: Classes per episode (>= 2).
        k_shot: Support examples per class (>= 1).
        n_query: Query examples per class (>= 1).
        seed: Seed of the sampler's own random stream.
        within_group: If true, all classes of an episode come from one group (alphabet),
            chosen uniformly among the groups with at least ``n_way`` classes.

    Raises:
        DataError: On invalid sizes, too few classes (in any group, with ``within_group``), or
            a class with fewer than ``k_shot + n_query`` examples.
    """

    def __init__(
        self,
        dataset: ImageClassDataset,
        n_way: int,
        k_shot: int,
        n_query: int,
        seed: int = 0,
        within_group: bool = False,
    ) -> None:
        self.dataset = dataset
        self.n_way = _positive(n_way, "n_way", 2)
        self.k_shot = _positive(k_shot, "k_shot", 1)
        self.n_query = _positive(n_query, "n_query", 1)
        self.seed = seed
        self.within_group = bool(within_group)
        self._rng = np.random.default_rng(seed)

        if within_group:
            by_group: dict[str, list[int]] = {}
            for c, g in enumerate(dataset.class_groups):
                by_group.setdefault(g, []).append(c)
            pools = [
                np.array(ids, dtype=np.int64) for ids in by_group.values() if len(ids) >= self.n_way
            ]
            if not pools:
                largest = max(len(ids) for ids in by_group.values())
                raise DataError(
                    f"within_group sampling needs a group with at least n_way={self.n_way} "
                    f"classes; the largest group of {dataset.name!r} has {largest}"
                )
        else:
            if dataset.num_classes < self.n_way:
                raise DataError(
                    f"a {self.n_way}-way episode needs at least {self.n_way} classes; "
                    f"{dataset.name!r} has {dataset.num_classes}"
                )
            pools = [np.arange(dataset.num_classes, dtype=np.int64)]
        self._pools = pools

        need = self.k_shot + self.n_query
        counts = dataset.class_counts()
        usable = np.unique(np.concatenate(pools))
        short = usable[counts[usable] < need]
        if short.size:
            c = int(short[0])
            raise DataError(
                f"class {dataset.class_names[c]!r} has {counts[c]} examples but a "
                f"{self.k_shot}-shot episode with {self.n_query} queries needs "
                f"k_shot + n_query = {need}"
                + (f" ({short.size} classes are that short)" if short.size > 1 else "")
            )
        # Padded (classes, max_count) table of dataset indices: one gather per episode.
        self._counts = counts
        self._table = np.full((dataset.num_classes, int(counts.max())), -1, dtype=np.int64)
        for c, idx in enumerate(dataset.indices_by_class()):
            self._table[c, : len(idx)] = idx

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.dataset.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
            f"n_query={self.n_query}, seed={self.seed}, within_group={self.within_group})"
        )

    def get_state(self) -> dict:
        """The random stream's state (JSON-serialisable), for checkpoints."""
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state`, so a resumed run draws the same episodes."""
        self._rng.bit_generator.state = state

    def sample(self) -> Episode:
        """Draw the next episode from the sampler's random stream."""
        rng = self._rng
        pool = (
            self._pools[int(rng.integers(len(self._pools)))]
            if len(self._pools) > 1
            else self._pools[0]
        )
        classes = rng.choice(pool, size=self.n_way, replace=False)
        chosen = self._draw_examples(classes)
        return Episode(classes, chosen[:, : self.k_shot], chosen[:, self.k_shot :])

    def _draw_examples(self, classes: np.ndarray) -> np.ndarray:
        need = self.k_shot + self.n_query
        counts = self._counts[classes]
        width = int(counts.max())
        if self.n_way * width <= _VECTORISED_MAX_KEYS:
            # Sorting random keys gives a uniformly random ordered sample per row; keys past a
            # class's count are pushed to the end so padding is never picked.
            keys = self._rng.random((self.n_way, width))
            keys[np.arange(width)[None, :] >= counts[:, None]] = 2.0
            order = np.argsort(keys, axis=1)[:, :need]
            return self._table[classes[:, None], order]
        # A few huge classes: per-class choice avoids a huge key matrix.
        return np.stack(
            [
                self._table[c, self._rng.choice(int(n), size=need, replace=False)]
                for c, n in zip(classes, counts, strict=True)
            ]
        )

    def take(self, n: int) -> list[Episode]:
        """The next ``n`` episodes."""
        n = _positive(n, "n", 0)
        return [self.sample() for _ in range(n)]

    def __iter__(self) -> Iterator[Episode]:
        """An endless stream of episodes (use ``itertools.islice`` or ``take`` to stop)."""
        while True:
            yield self.sample()
