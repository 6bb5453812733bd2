"""Figure: interpreter time of one classification (all its test-time views, 1 thread), bundle size.

    python benchmarks/latency.py BUNDLE [--backend ai_edge_litert] [--threads 1] [--runs 2000]

Ends with: ``bundle=PATH bytes=B backend=NAME threads=T views=V invoke_us_p50=X invoke_us_p95=Y
classify_ms_p50=Z`` (classify = preprocessing a 105x105 image + embedding + prototype search
over 20 classes, what one `FewShotClassifier.classify` call costs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.bundle import read_bundle
from edgemeta.runtime import FewShotClassifier
from edgemeta.runtime.embedder import input_details, set_batch_size


def invoke_times_us(interp: Any, batch: int, runs: int) -> np.ndarray:
    """Interpreter time of ``runs`` invokes of a ``batch`` of random int8 images, in µs.

    50 invokes warm up first (XNNPACK packs its weights on the first one).
    """
    set_batch_size(interp, batch)
    interp.allocate_tensors()  # a batch of 1 needs no resize, but a fresh interpreter has no tensors
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
    return np.array(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args()
    bundle = read_bundle(args.bundle)
    clf = FewShotClassifier(bundle, backend=args.backend, num_threads=args.threads)
    # One classification embeds 1 + len(test_time_shifts) views in one batch.
    views = 1 + len(bundle.manifest.test_time_shifts)
    us = invoke_times_us(clf.embedder.interpreter, views, args.runs)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(21, 105, 105), dtype=np.uint8)
    for c in range(20):
        clf.enroll(f"c{c}", images[c:c + 1])
    classify = []
    for _ in range(max(50, args.runs // 10)):
        t = time.perf_counter()
        clf.classify(images[20:21])
        classify.append(time.perf_counter() - t)
    print(f"bundle={args.bundle} bytes={args.bundle.stat().st_size} backend={clf.backend} "
          f"threads={args.threads} views={views} invoke_us_p50={np.percentile(us, 50):.1f} "
          f"invoke_us_p95={np.percentile(us, 95):.1f} "
          f"classify_ms_p50={np.percentile(classify, 50) * 1e3:.3f}")


if __name__ == "__main__":
    main()
