"""Figure: test-time views against interpreter time, for one held-out bundle.

Each classification embeds ``1 + len(test_time_shifts)`` views in one batch, so the views are
what decides whether a bundle meets the 0.2 ms target on a given machine. For each view set this
scores the bundle as the board would use it (the same views at enrollment and classification,
int8 through the board's Embedder) on the episodes ``benchmarks/omniglot.py`` scores, and times
one invoke of that batch on 1 thread:

    python benchmarks/view_budget.py /tmp/exp4/I-f32/omniglot-protonet-tta3.edgemeta \\
        --holdout Korean,Balinese

One line per view set: views, invoke p50 in µs, 20-way 1-shot and 5-way 5-shot int8 accuracy,
and 20-way 1-shot per held-out alphabet.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgemeta.bundle import Bundle, read_bundle
from edgemeta.data import EpisodeSampler, ImageClassDataset, load_omniglot
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.embedder import input_details, set_batch_size
from edgemeta.runtime.preprocess import preprocess_batch

from enroll_views import SHARED, accuracy, embed_all  # the sibling script (same episodes)

VIEW_SETS: dict[str, list[tuple[int, int]]] = {
    "1 (no shift)": [],
    "2 (+right 3)": [(0, 3)],
    "2 (+diagonal 3)": [(3, 3)],
    "2 (+diagonal 2)": [(2, 2)],
    "3 (+left/right 3)": [(0, 3), (0, -3)],
    "3 (+diagonals 3)": [(3, 3), (-3, -3)],
    "5 (cross 3)": [(3, 0), (-3, 0), (0, 3), (0, -3)],
}


def invoke_us(bundle: Bundle, views: int, runs: int = 1500) -> float:
    """Median interpreter time of one batch of ``views`` images, 1 thread, in µs."""
    interp = load_interpreter(bundle.model, num_threads=1).interpreter
    set_batch_size(interp, views)
    interp.allocate_tensors()  # a batch of 1 needs no resize, but a fresh interpreter no tensors
    detail = input_details(interp)
    interp.set_tensor(detail["index"], np.random.default_rng(0).integers(
        -128, 128, size=detail["shape"], dtype=np.int8))
    for _ in range(50):
        interp.invoke()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--holdout", required=True, help="the alphabets the bundle was trained without")
    args = p.parse_args()
    bundle = read_bundle(args.bundle)
    holdout = args.holdout.split(",")
    data = load_omniglot(sorted(SHARED.glob("*.zip")), name="omniglot-background-small")
    test: ImageClassDataset = data.split_groups(holdout)[1]
    x = preprocess_batch(test.images, bundle.manifest.input.preprocessing)
    metric = bundle.manifest.distance
    # The seeds benchmarks/omniglot.py uses.
    eps_20_1 = EpisodeSampler(test, 20, 1, 5, seed=121, within_group=True).take(1000)
    eps_5_5 = EpisodeSampler(test, 5, 5, 5, seed=110, within_group=True).take(1000)
    groups = {}
    for g in holdout:
        ids = [c for c, gg in enumerate(test.class_groups) if gg == g]
        rows = np.nonzero(np.isin(test.labels, ids))[0]
        groups[g] = (rows, EpisodeSampler(test.subset_classes(ids), 20, 1, 5, seed=7).take(250))
    for name, shifts in VIEW_SETS.items():
        emb = embed_all(bundle, x, shifts)
        views = replace(bundle.manifest, test_time_shifts=tuple(shifts))
        cells = [f"invoke_us={invoke_us(replace(bundle, manifest=views), 1 + len(shifts)):.1f}",
                 f"20w1s {accuracy(emb, emb, eps_20_1, metric):.2f}",
                 f"5w5s {accuracy(emb, emb, eps_5_5, metric):.2f}"]
        cells += [f"{g} {accuracy(emb[rows], emb[rows], eps, metric):.2f}"
                  for g, (rows, eps) in groups.items()]
        print(f"views {name:<20} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
