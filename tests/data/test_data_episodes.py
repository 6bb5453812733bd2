"""EpisodeSampler and episode_labels: shapes, disjointness, reproducibility, groups, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgemeta.data import Episode, EpisodeSampler, ImageClassDataset, episode_labels
from edgemeta.errors import DataError


def grouped(counts: list[int], groups: list[str]) -> ImageClassDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # classes interleaved, as in real data
    images = np.zeros((len(labels), 2, 2), np.uint8)
    return ImageClassDataset(
        images, labels, tuple(f"c{i}" for i in range(len(counts))), tuple(groups), "g"
    )


def test_shapes_membership_and_disjointness(glyphs: ImageClassDataset) -> None:
    sampler = EpisodeSampler(glyphs, n_way=5, k_shot=2, n_query=3, seed=0)
    for ep in sampler.take(50):
        assert isinstance(ep, Episode)
        assert ep.classes.shape == (5,) and ep.support.shape == (5, 2) and ep.query.shape == (5, 3)
        assert len(set(ep.classes.tolist())) == 5
        assert (glyphs.labels[ep.support] == ep.classes[:, None]).all()
        assert (glyphs.labels[ep.query] == ep.classes[:, None]).all()
        assert set(ep.support.ravel()).isdisjoint(ep.query.ravel())
        assert len(set(ep.query.ravel())) == 15


def test_reproducible_and_seed_dependent(glyphs: ImageClassDataset) -> None:
    def run(seed: int) -> list[tuple]:
        s = EpisodeSampler(glyphs, 5, 1, 2, seed=seed)
        return [
            tuple(np.concatenate([e.classes, e.support.ravel(), e.query.ravel()]))
            for e in s.take(10)
        ]

    assert run(4) == run(4)
    assert run(4) != run(5)
    via_iter = [
        e.classes.tolist()
        for e in itertools.islice(iter(EpisodeSampler(glyphs, 5, 1, 2, seed=4)), 10)
    ]
    assert via_iter == [list(t[:5]) for t in run(4)]


def test_sampling_covers_classes_and_examples(glyphs: ImageClassDataset) -> None:
    sampler = EpisodeSampler(glyphs, 5, 1, 1, seed=0)
    eps = sampler.take(300)
    assert len({c for e in eps for c in e.classes.tolist()}) == 30
    support_of_0 = {
        int(i)
        for e in eps
        for row, c in zip(e.support, e.classes, strict=True)
        if c == 0
        for i in row
    }
    assert len(support_of_0) == 8  # every drawing of a class ends up in some support set
    first_positions = {int(e.classes[0]) for e in eps}
    assert len(first_positions) > 20  # class order within an episode is random too


def test_unequal_class_sizes_never_pick_padding() -> None:
    ds = grouped([3, 50, 4, 7], [""] * 4)
    for ep in EpisodeSampler(ds, 4, 1, 2, seed=1).take(100):
        assert (ep.support >= 0).all() and (ds.labels[ep.query] == ep.classes[:, None]).all()
        assert set(ep.support.ravel()).isdisjoint(ep.query.ravel())


def test_within_group() -> None:
    groups = ["A"] * 3 + ["B"] * 5 + ["C"] * 2
    ds = grouped([4] * 10, groups)
    sampler = EpisodeSampler(ds, 3, 1, 1, seed=0, within_group=True)
    seen = set()
    for ep in sampler.take(100):
        g = {groups[c] for c in ep.classes.tolist()}
        assert len(g) == 1 and g <= {"A", "B"}  # C has too few classes for 3-way
        seen |= g
    assert seen == {"A", "B"}
    with pytest.raises(DataError, match="largest group .* has 5"):
        EpisodeSampler(ds, 6, 1, 1, within_group=True)
    # Without groups the 6-way episode is fine.
    assert EpisodeSampler(ds, 6, 1, 1).sample().classes.shape == (6,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_way": 1}, "n_way must be an integer >= 2"),
        ({"k_shot": 0}, "k_shot must be an integer >= 1"),
        ({"n_query": 0}, "n_query must be an integer >= 1"),
        ({"n_way": 2.0}, "n_way"),
        ({"n_way": 11}, "at least 11 classes"),
        ({"k_shot": 3, "n_query": 2}, r"class 'c2' has 4 examples .* needs k_shot \+ n_query = 5"),
    ],
)
def test_invalid_samplers(kwargs: dict, message: str) -> None:
    ds = grouped([6, 6, 4] + [6] * 7, [""] * 10)
    args = {"n_way": 5, "k_shot": 1, "n_query": 1}
    args.update(kwargs)
    with pytest.raises(DataError, match=message):
        EpisodeSampler(ds, **args)


def test_short_class_outside_usable_groups_is_ignored() -> None:
    ds = grouped([6, 6, 1], ["A", "A", "B"])
    assert EpisodeSampler(ds, 2, 2, 2, within_group=True).sample().support.shape == (2, 2)


def test_episode_labels() -> None:
    ep = Episode(np.array([7, 3, 9]), np.arange(6).reshape(3, 2), np.arange(6, 18).reshape(3, 4))
    sup, qry = episode_labels(ep)
    assert sup.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert qry.shape == (3, 4) and (qry == np.arange(3)[:, None]).all()
    assert sup.dtype == np.int64 and sup.flags.writeable


def test_wide_episodes_from_many_small_classes() -> None:
    # 70 classes of 12 images, 60-way 5-shot 5-query (the training shape): every episode valid.
    # Its speed is measured by benchmarks/episode_speed.py, not here.
    labels = np.repeat(np.arange(70), 12)
    ds = ImageClassDataset(
        np.zeros((840, 1, 1), np.uint8), labels, tuple(map(str, range(70))), ("",) * 70
    )
    sampler = EpisodeSampler(ds, 60, 5, 5, seed=0)
    episodes = sampler.take(200)
    assert len(episodes) == 200
    for ep in episodes:
        assert ep.classes.shape == (60,) and len(set(ep.classes.tolist())) == 60
        assert ep.support.shape == (60, 5) and ep.query.shape == (60, 5)
        assert (labels[ep.support] == ep.classes[:, None]).all()
        assert (labels[ep.query] == ep.classes[:, None]).all()
        assert set(ep.support.ravel()).isdisjoint(ep.query.ravel())
    assert len({tuple(ep.classes.tolist()) for ep in episodes}) > 1  # not one episode repeated


def test_fit_episode_size_shrinks_queries_then_way_never_the_shot():
    from edgemeta.data import fit_episode_size, make_glyph_dataset

    data = make_glyph_dataset(n_classes=3, per_class=4, seed=1)
    assert fit_episode_size(data, 5, 1, 5) == (3, 1, 3)
    assert fit_episode_size(data, 2, 2, 1) == (2, 2, 1)  # what fits is left alone
    with pytest.raises(DataError, match="4-shot"):
        fit_episode_size(data.subset_classes([0, 1]), 5, 4, 5)  # 4 images: no query left
    with pytest.raises(DataError, match="at least 2 classes"):
        fit_episode_size(data.subset_classes([0]), 5, 1, 5)
