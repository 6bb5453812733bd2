"""Figure: seconds per training episode, compiled (tf.function) vs eager, data sampling included.

Conv-4 ProtoNet, 60-way 5-shot 5-query on Omniglot (the shared zips, rotations as classes).
Ends with: ``algorithm=A way=W shot=S query=Q compiled_s=C eager_s=E speedup=X``

    python benchmarks/episode_speed.py [--algorithm protonet] [--way 60] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from edgemeta.bundle import Preprocessing
from edgemeta.data import EpisodeSampler, load_omniglot
from edgemeta.meta import TrainConfig, conv4, make_learner, make_step, preprocess_dataset
from edgemeta.meta.training import _task_batch

SHARED = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))


def time_steps(compiled: bool, config: TrainConfig, x: np.ndarray, data, steps: int) -> float:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = conv4(tuple(x.shape[1:]), filters=config.filters)
    learner = make_learner(config, model)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    step = make_step(learner, optimizer, config, compiled=compiled)
    sampler = EpisodeSampler(data, config.n_way, config.k_shot, config.n_query, seed=0)
    for _ in range(3):  # trace and warm up
        step(*(tf.constant(a) for a in _task_batch(x, sampler, config)))
    started = time.perf_counter()
    for _ in range(steps):
        loss, _ = step(*(tf.constant(a) for a in _task_batch(x, sampler, config)))
        float(loss)  # wait for the result
    return (time.perf_counter() - started) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", default="protonet")
    p.add_argument("--way", type=int, default=60)
    p.add_argument("--shot", type=int, default=5)
    p.add_argument("--query", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    data = load_omniglot(sorted(SHARED.glob("*.zip"))).with_rotations()
    x = preprocess_dataset(data, Preprocessing())
    config = TrainConfig(algorithm=args.algorithm, n_way=args.way, k_shot=args.shot,
                         n_query=args.query)
    compiled = time_steps(True, config, x, data, args.steps)
    eager = time_steps(False, config, x, data, max(3, args.steps // 3))
    print(f"algorithm={args.algorithm} way={args.way} shot={args.shot} query={args.query} "
          f"compiled_s={compiled:.3f} eager_s={eager:.3f} speedup={eager / compiled:.2f}")


if __name__ == "__main__":
    main()
