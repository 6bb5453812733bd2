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
from pathlib import Path

import numpy as np

from edgemeta.bundle import read_bundle
from edgemeta.runtime.backends import load_interpreter

# The sibling scripts: the same held-out episodes, the same timing loop.
from enroll_views import accuracy, embed_all, held_out
from latency import invoke_times_us

VIEW_SETS: dict[str, list[tuple[int, int]]] = {
    "1 (no shift)": [],
    "2 (+right 3)": [(0, 3)],
    "2 (+diagonal 3)": [(3, 3)],
    "2 (+diagonal 2)": [(2, 2)],
    "3 (+left/right 3)": [(0, 3), (0, -3)],
    "3 (+diagonals 3)": [(3, 3), (-3, -3)],
    "5 (cross 3)": [(3, 0), (-3, 0), (0, 3), (0, -3)],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--holdout", required=True, help="the alphabets the bundle was trained without")
    args = p.parse_args()
    bundle = read_bundle(args.bundle)
    h = held_out(bundle, args.holdout.split(","))
    metric = bundle.manifest.distance
    for name, shifts in VIEW_SETS.items():
        emb = embed_all(bundle, h.x, shifts)
        interp = load_interpreter(bundle.model, num_threads=1).interpreter
        us = float(np.percentile(invoke_times_us(interp, 1 + len(shifts), 1500), 50))
        cells = [f"invoke_us={us:.1f}",
                 f"20w1s {accuracy(emb, emb, h.eps_20_1, metric):.2f}",
                 f"5w5s {accuracy(emb, emb, h.eps_5_5, metric):.2f}"]
        cells += [f"{g} {accuracy(emb[rows], emb[rows], eps, metric):.2f}"
                  for g, (rows, eps) in h.groups.items()]
        print(f"views {name:<20} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
