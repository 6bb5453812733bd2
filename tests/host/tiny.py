"""A tiny trained model and its int8 bundle, built once per test session and cached on disk.

Training is a few dozen episodes of a 16-filter Conv-4 on synthetic glyphs: seconds, not minutes.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

# One private folder per test process, removed when it exits.
CACHE = Path(tempfile.mkdtemp(prefix="edgemeta-tiny-"))
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)


@lru_cache(maxsize=1)
def tiny_run() -> tuple[object, Path]:
    """(TrainResult, run_dir) of a tiny protonet trained on synthetic glyphs."""
    from edgemeta.meta import TrainConfig
    from edgemeta.pipeline import DataSplit, train_run

    run_dir = CACHE / "run"
    config = TrainConfig(n_way=5, k_shot=2, n_query=3, episodes=60, filters=16, seed=0,
                         val_every=30, val_episodes=20)
    result, _ = train_run(DataSplit("synthetic:40", 0.3, 0), config, run_dir, progress=False)
    return result, run_dir


@lru_cache(maxsize=1)
def tiny_bundle() -> tuple[object, Path]:
    """(QuantReport, bundle path) for the tiny run."""
    from edgemeta.bundle import Preprocessing
    from edgemeta.pipeline import DataSplit, bundle_run

    result, run_dir = tiny_run()
    path = run_dir / "tiny.edgemeta"
    _, report = bundle_run(result.model, result.config, DataSplit("synthetic:40", 0.3, 0),
                           Preprocessing(), path, name="tiny", version="1.0.0", eval_episodes=30)
    return report, path


def tiny_bundle_path() -> Path:
    return tiny_bundle()[1]
