"""Figure: does host-side adaptation beat plain prototypes for a MAML-family model?

Takes a model from ``benchmarks/omniglot.py`` (its ``--out`` folder), builds "sites" of 20
characters from one held-out alphabet with K examples each to adapt on and the rest to measure,
and compares nearest-prototype accuracy with the original vs the adapted embedding.

    python benchmarks/adapt_vs_prototypes.py --run /tmp/exp/M-maml [--shots 1,5] [--sites 10]

One line per shot count: ``shots=K sites=S prototypes=P adapted=A``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from edgemeta.bundle import Preprocessing
from edgemeta.data import EpisodeSampler, load_omniglot
from edgemeta.meta import preprocess_dataset
from edgemeta.meta.adapt import adapt_model, prototype_vs_adapted

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--shots", default="1,5")
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    results = json.loads((args.run / "results.json").read_text())
    cfg = results["config"]
    data = load_omniglot(sorted(SHARED.glob("*.zip")))
    _, test = data.split_groups(results["holdout"])
    x = preprocess_dataset(test, Preprocessing())
    model = keras.models.load_model(args.run / "model.keras")
    for k in (int(v) for v in args.shots.split(",")):
        eps = EpisodeSampler(test, 20, k, 5, seed=11, within_group=True).take(args.sites)
        pa = []
        for ep in eps:
            sy = np.repeat(np.arange(20), k)
            qy = np.repeat(np.arange(20), 5)
            sx, qx = x[ep.support.reshape(-1)], x[ep.query.reshape(-1)]
            adapted = adapt_model(model, sx, sy, steps=args.steps, lr=cfg["inner_lr"])
            pa.append(prototype_vs_adapted(model, adapted, (sx, sy), (qx, qy)))
        proto, adapt = np.mean(pa, axis=0)
        print(f"shots={k} sites={len(eps)} prototypes={proto:.4f} adapted={adapt:.4f}", flush=True)


if __name__ == "__main__":
    main()
