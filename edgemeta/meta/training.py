"""Episodic meta-training (host only): configuration, loop, progress, log and saved model."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta._deps import require
from edgemeta.bundle.manifest import Preprocessing
from edgemeta.data import EpisodeSampler, ImageClassDataset
from edgemeta.errors import ConfigError, DataError
from edgemeta.meta.backbones import conv4
from edgemeta.meta.evaluate import embed_float, episode_accuracies, summarize
from edgemeta.meta.protonet import make_protonet_step
from edgemeta.runtime.preprocess import preprocess_batch

__all__ = ["TrainConfig", "TrainResult", "preprocess_dataset", "train_protonet", "save_training"]

ALGORITHMS = ("protonet",)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; written into the bundle's provenance."""

    algorithm: str = "protonet"
    n_way: int = 20
    k_shot: int = 5
    n_query: int = 5
    episodes: int = 400
    learning_rate: float = 1e-3
    lr_halve_every: int = 0  # 0: halve at 50 % and 75 % of the run
    filters: int = 64
    seed: int = 0
    val_every: int = 100
    val_way: int = 5
    val_shot: int = 1
    val_episodes: int = 100

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm {self.algorithm!r} unknown; expected one of {ALGORITHMS}")
        minimum = {"n_way": 2, "k_shot": 1, "n_query": 1, "episodes": 1, "filters": 1,
                   "val_every": 1, "val_way": 2, "val_shot": 1, "val_episodes": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")


@dataclass
class TrainResult:
    model: Any
    config: TrainConfig
    history: list[dict[str, float]]
    seconds: float


def preprocess_dataset(dataset: ImageClassDataset, spec: Preprocessing) -> np.ndarray:
    """The board's preprocessing, applied to every image of a dataset: (N, H, W, C) float32."""
    return preprocess_batch(dataset.images, spec)


def _lr_schedule(keras: Any, config: TrainConfig) -> Any:
    if config.lr_halve_every > 0:
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, config.lr_halve_every, 0.5, staircase=True)
    bounds = [max(1, config.episodes // 2), max(2, (3 * config.episodes) // 4)]
    values = [config.learning_rate, config.learning_rate / 2, config.learning_rate / 4]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)


def train_protonet(train_x: np.ndarray, train: ImageClassDataset, config: TrainConfig,
                   val_x: np.ndarray | None = None, val: ImageClassDataset | None = None,
                   progress: bool = True, log_path: Path | None = None) -> TrainResult:
    """Meta-train a Conv-4 prototypical network on episodes of ``train``.

    Args:
        train_x: ``preprocess_dataset(train, spec)``.
        train: The training classes (labels index ``train_x``).
        config: The run's configuration.
        val_x, val: Optional unseen classes for periodic validation (float model).
        progress: Show a tqdm progress bar with running loss and validation accuracy.
        log_path: If given, one JSON line per logged point is written here (replacing it).
    """
    tf = require("tensorflow", "meta-training")
    keras = require("keras", "meta-training")
    tqdm = require("tqdm", "the training progress bar").tqdm
    if train.num_classes < config.n_way:
        raise DataError(f"training set has {train.num_classes} classes; {config.n_way}-way "
                        "episodes need at least that many")
    keras.utils.set_random_seed(config.seed)
    model = conv4(tuple(train_x.shape[1:]), filters=config.filters)
    optimizer = keras.optimizers.Adam(_lr_schedule(keras, config))
    step = make_protonet_step(model, optimizer, config.n_way, config.k_shot)
    sampler = EpisodeSampler(train, config.n_way, config.k_shot, config.n_query, seed=config.seed)
    val_episodes = None
    if val is not None and val_x is not None:
        val_episodes = EpisodeSampler(val, config.val_way, config.val_shot, 5,
                                      seed=config.seed + 1).take(config.val_episodes)
    query_labels = tf.constant(np.repeat(np.arange(config.n_way), config.n_query), tf.int32)
    history: list[dict[str, float]] = []
    losses: list[float] = []
    accs: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(1, config.episodes + 1), desc="meta-train", unit="ep", disable=not progress,
               dynamic_ncols=True)
    log_fh = open(log_path, "w", encoding="utf-8") if log_path else None
    try:
        for episode in bar:
            ep = sampler.sample()
            loss, acc = step(tf.constant(train_x[ep.support.reshape(-1)]),
                             tf.constant(train_x[ep.query.reshape(-1)]), query_labels)
            losses.append(float(loss))
            accs.append(float(acc))
            log_now = episode % max(1, config.val_every) == 0 or episode == config.episodes
            if log_now:
                point = {"episode": episode, "loss": float(np.mean(losses[-50:])),
                         "train_acc": float(np.mean(accs[-50:])),
                         "seconds": round(time.perf_counter() - started, 2)}
                if val_episodes:
                    emb = embed_float(model, val_x)
                    point["val_acc"] = summarize(episode_accuracies(emb, val_episodes)).mean
                history.append(point)
                if log_fh:
                    log_fh.write(json.dumps(point) + "\n")
                    log_fh.flush()
                bar.set_postfix({k: f"{v:.3f}" for k, v in point.items()
                                 if k in ("loss", "train_acc", "val_acc")})
    finally:
        bar.close()
        if log_fh:
            log_fh.close()
    return TrainResult(model, config, history, time.perf_counter() - started)


def save_training(result: TrainResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``model.keras`` and ``train_config.json`` (the log was written while training)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "model.keras", "config": out / "train_config.json"}
    result.model.save(paths["model"])
    paths["config"].write_text(json.dumps(asdict(result.config), indent=2))
    return paths
