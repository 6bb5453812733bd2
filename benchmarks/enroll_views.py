"""Figure: extra shifted views at enrollment only (queries keep the manifest's views).

A board has time to spare when it enrolls, none when it classifies; this measures whether
averaging more shifted views into each prototype helps. Episodes are the ones
``benchmarks/omniglot.py`` scores (same seeds), on a bundle it wrote for a held-out pair:

    python benchmarks/enroll_views.py /tmp/exp3/F-1shot/omniglot-protonet-tta3.edgemeta \\
        --holdout Korean,Balinese

One line per enrollment view set: 20-way 1-shot and 5-way 5-shot int8 accuracy, and 20-way
1-shot per held-out alphabet.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgemeta.bundle import Bundle, read_bundle
from edgemeta.data import EpisodeSampler, ImageClassDataset, load_omniglot
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.preprocess import preprocess_batch
from edgemeta.runtime.prototypes import classify_embeddings, compute_prototypes

SHARED = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))

CROSS = {d: [(d, 0), (-d, 0), (0, d), (0, -d)] for d in (1, 2, 3, 6)}
DIAG = {d: [(d, d), (d, -d), (-d, d), (-d, -d)] for d in (2, 3)}
VIEW_SETS = {
    "5 (as classified)": CROSS[3],
    "9 (+diagonals 3)": CROSS[3] + DIAG[3],
    "9 (+cross 6)": CROSS[3] + CROSS[6],
    "13 (+diag 3, cross 6)": CROSS[3] + DIAG[3] + CROSS[6],
    "9 (+cross 1)": CROSS[1] + CROSS[3],
    "13 (cross 1,2,3)": CROSS[1] + CROSS[2] + CROSS[3],
    "17 (cross 1,2,3, diag 2)": CROSS[1] + CROSS[2] + CROSS[3] + DIAG[2],
}


def embed_all(bundle: Bundle, x: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """Embed every image with ``shifts`` as the bundle's views (int8, board runtime)."""
    emb = Embedder(replace(bundle, manifest=replace(bundle.manifest, test_time_shifts=tuple(shifts))))
    return np.concatenate([emb.embed(x[i:i + 64]) for i in range(0, len(x), 64)])


def accuracy(support_emb: np.ndarray, query_emb: np.ndarray, episodes: list, metric: str) -> float:
    """Mean nearest-prototype accuracy, prototypes from ``support_emb``, queries from the other."""
    accs = []
    for ep in episodes:
        n, k = ep.support.shape
        names = [str(c) for c in range(n)]
        labels, protos, _ = compute_prototypes(support_emb[ep.support.reshape(-1)], np.repeat(names, k))
        preds = classify_embeddings(query_emb[ep.query.reshape(-1)], labels, protos, metric)
        truth = np.repeat(names, ep.query.shape[1])
        accs.append(np.mean([p.label == t for p, t in zip(preds, truth)]))
    return 100.0 * float(np.mean(accs))


@dataclass(frozen=True)
class HeldOut:
    """The held-out images preprocessed for a bundle, and the episodes omniglot.py scores."""

    x: np.ndarray
    eps_20_1: list
    eps_5_5: list
    groups: dict[str, tuple[np.ndarray, list]]  # alphabet -> (image rows, 20w1s episodes)


def held_out(bundle: Bundle, holdout: list[str]) -> HeldOut:
    """The seeds benchmarks/omniglot.py uses, so a bundle's own views reproduce its table."""
    data = load_omniglot(sorted(SHARED.glob("*.zip")), name="omniglot-background-small")
    test: ImageClassDataset = data.split_groups(holdout)[1]
    groups = {}
    for g in holdout:
        ids = [c for c, gg in enumerate(test.class_groups) if gg == g]
        rows = np.nonzero(np.isin(test.labels, ids))[0]  # subset_classes keeps image order
        groups[g] = (rows, EpisodeSampler(test.subset_classes(ids), 20, 1, 5, seed=7).take(250))
    return HeldOut(preprocess_batch(test.images, bundle.manifest.input.preprocessing),
                   EpisodeSampler(test, 20, 1, 5, seed=121, within_group=True).take(1000),
                   EpisodeSampler(test, 5, 5, 5, seed=110, within_group=True).take(1000), groups)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--holdout", required=True, help="the alphabets the bundle was trained without")
    args = p.parse_args()
    bundle = read_bundle(args.bundle)
    h = held_out(bundle, args.holdout.split(","))
    x, eps_20_1, eps_5_5, groups = h.x, h.eps_20_1, h.eps_5_5, h.groups
    query = embed_all(bundle, x, list(bundle.manifest.test_time_shifts))
    metric = bundle.manifest.distance
    for name, shifts in VIEW_SETS.items():
        support = embed_all(bundle, x, shifts)
        cells = [f"20w1s {accuracy(support, query, eps_20_1, metric):.2f}",
                 f"5w5s {accuracy(support, query, eps_5_5, metric):.2f}"]
        cells += [f"{g} {accuracy(support[rows], query[rows], eps, metric):.2f}"
                  for g, (rows, eps) in groups.items()]
        print(f"enroll views {name:<26} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
