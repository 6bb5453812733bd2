"""Figure: what magnitude pruning does to size, latency and accuracy (float and int8).

Takes a model trained by ``benchmarks/omniglot.py`` (its ``--out`` folder) and, for each sparsity,
prunes, converts to int8 and scores 20-way 1-shot within-alphabet episodes on the held-out
alphabets, float and int8 (``FewShotClassifier``), plus the stored and deflate-compressed bundle
size and the interpreter time of one image (1 thread).

    python benchmarks/prune.py --run /tmp/omni-protonet [--sparsity 0,0.3,0.5,0.7]

One line per sparsity: ``sparsity=S float=F int8=I bundle_bytes=B deflated_bytes=D invoke_us=U``
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import keras
import numpy as np

from edgemeta.bundle import Bundle, Preprocessing, Provenance, bundle_bytes
from edgemeta.data import EpisodeSampler, load_omniglot
from edgemeta.meta import preprocess_dataset
from edgemeta.quantize import compare_float_int8, convert_int8, magnitude_prune, make_manifest
from edgemeta.quantize import representative_sample
from edgemeta.runtime import FewShotClassifier

from latency import invoke_times_us  # the sibling script: one timing loop for every figure

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def invoke_us(bundle: Bundle, runs: int = 1000) -> float:
    """Median interpreter time of one image, in µs."""
    return float(np.median(invoke_times_us(FewShotClassifier(bundle).embedder.interpreter, 1,
                                           runs)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--sparsity", default="0,0.3,0.5,0.7")
    p.add_argument("--episodes", type=int, default=500)
    args = p.parse_args()
    results = json.loads((args.run / "results.json").read_text())
    cfg = results["config"]
    holdout = results["holdout"]
    data = load_omniglot(sorted(SHARED.glob("*.zip")))
    train, test = data.split_groups(holdout)
    size = int(results.get("size", 28))
    spec = Preprocessing(size=(size, size))
    train_x = preprocess_dataset(train.with_rotations(), spec)
    test_x = preprocess_dataset(test, spec)
    model = keras.models.load_model(args.run / "model.keras")
    eps = EpisodeSampler(test, 20, 1, 5, seed=121, within_group=True).take(args.episodes)
    for s in (float(v) for v in args.sparsity.split(",")):
        pruned = magnitude_prune(model, s) if s else model
        int8 = convert_int8(pruned, representative_sample(train_x, 300))
        m = make_manifest(int8, name="pruned", version="1.0.0", preprocessing=spec,
                          provenance=Provenance(extra={"prune": s}),
                          normalize_embeddings=cfg.get("normalize", False))
        bundle = Bundle(m, int8)
        rep = compare_float_int8(pruned, test_x, bundle, test, eps)
        raw = bundle_bytes(m, int8)
        print(f"sparsity={s:.2f} float={rep.float_accuracy.mean:.4f} int8={rep.int8_accuracy.mean:.4f} "
              f"bundle_bytes={len(raw)} deflated_bytes={len(zlib.compress(raw, 9))} "
              f"invoke_us={invoke_us(bundle):.1f}", flush=True)


if __name__ == "__main__":
    main()
