"""Episodic meta-training for every learner: compiled steps, meta-batches, tf.distribute,
time budgets, checkpoints with resume, validation, a JSON-lines log and a progress bar.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta._deps import require
from edgemeta.bundle.manifest import Preprocessing
from edgemeta.data import EpisodeSampler, ImageClassDataset, fit_episode_size
from edgemeta.errors import ConfigError, DataError
from edgemeta.meta.adapt import recalibrate_batch_norm
from edgemeta.meta.augment import augment_images
from edgemeta.meta.backbones import conv4
from edgemeta.meta.checkpoint import data_fingerprint, load_checkpoint, save_checkpoint
from edgemeta.meta.config import ALGORITHMS, UNLIMITED_EPISODES, TrainConfig
from edgemeta.meta.evaluate import embed_float, episode_accuracies, summarize
from edgemeta.meta.learners import make_learner
from edgemeta.runtime.preprocess import preprocess_batch

__all__ = ["ALGORITHMS", "TrainConfig", "TrainResult", "preprocess_dataset", "train_meta",
           "save_training", "make_step", "lr_at"]

tf = require("tensorflow", "meta-training")
keras = require("keras", "meta-training")


@dataclass
class TrainResult:
    model: Any
    config: TrainConfig
    history: list[dict[str, float]]
    seconds: float
    episodes_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def preprocess_dataset(dataset: ImageClassDataset, spec: Preprocessing) -> np.ndarray:
    """The board's preprocessing, applied to every image of a dataset: (N, H, W, C) float32."""
    return preprocess_batch(dataset.images, spec)


def lr_at(config: TrainConfig, progress: float) -> float:
    """Step schedule: halve at 50 % and again at 75 % of the run."""
    return config.learning_rate * (0.5 ** (int(progress >= 0.5) + int(progress >= 0.75)))


def make_step(learner: Any, optimizer: Any, config: TrainConfig, strategy: Any | None = None,
              compiled: bool = True, generator: Any | None = None):
    """``step(sx, sy, qx, qy) -> (loss, acc)`` for a meta-batch (T, ...) of tasks.

    Gradients are averaged over the batch's tasks and, under a ``tf.distribute`` strategy, over
    replicas (each replica takes its share of the tasks; Keras sums replica gradients, so each
    replica scales its own by 1/replicas).
    """
    gen = generator if generator is not None else tf.random.Generator.from_seed(config.seed + 17)

    def per_replica(sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[Any, Any]:
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        n_tasks = sx.shape[0]
        total, loss_sum, acc_sum = None, 0.0, 0.0
        for t in range(n_tasks):  # static unroll: meta batches are small
            s, q = sx[t], qx[t]
            if config.augment:
                s, q = augment_images(s, gen), augment_images(q, gen)
            grads, loss, acc = learner.task_grads(s, sy[t], q, qy[t])
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, learner.variables)]
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            loss_sum += loss
            acc_sum += acc
        factor = 1.0 / (n_tasks * replicas)
        optimizer.apply_gradients(zip([g * factor for g in total], learner.variables))
        return loss_sum / n_tasks, acc_sum / n_tasks

    if strategy is None:
        fn = per_replica
    else:
        def fn(sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[Any, Any]:
            def split(a: Any) -> Any:
                return strategy.experimental_distribute_values_from_function(
                    lambda ctx: tf.split(a, strategy.num_replicas_in_sync)[
                        ctx.replica_id_in_sync_group])
            loss, acc = strategy.run(per_replica, args=tuple(split(a) for a in (sx, sy, qx, qy)))
            mean = tf.distribute.ReduceOp.MEAN
            return strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, acc, axis=None)
    return tf.function(fn, reduce_retracing=True) if compiled else fn


def _task_batch(x: np.ndarray, sampler: EpisodeSampler, config: TrainConfig):
    eps = [sampler.sample() for _ in range(config.meta_batch)]
    sy = np.repeat(np.arange(config.n_way, dtype=np.int32), config.k_shot)
    qy = np.repeat(np.arange(config.n_way, dtype=np.int32), config.n_query)
    return (np.stack([x[e.support.reshape(-1)] for e in eps]), np.tile(sy, (len(eps), 1)),
            np.stack([x[e.query.reshape(-1)] for e in eps]), np.tile(qy, (len(eps), 1)))


def train_meta(train_x: np.ndarray, train: ImageClassDataset, config: TrainConfig,
               val_x: np.ndarray | None = None, val: ImageClassDataset | None = None, *,
               progress: bool = True, log_path: Path | None = None,
               checkpoint_dir: Path | None = None, resume: bool = False,
               strategy: Any | None = None) -> TrainResult:
    """Meta-train a Conv-4 embedding network with ``config.algorithm``.

    Args:
        train_x: ``preprocess_dataset(train, spec)``.
        train: The training classes (labels index ``train_x``).
        config: The run's configuration.
        val_x, val: Optional unseen classes for periodic prototype validation (float model).
        progress: Show a progress bar with the running loss and validation accuracy.
        log_path: One JSON line per logged point (rewritten; when resuming, from the
            checkpoint's history on).
        checkpoint_dir: Where ``checkpoint.npz`` goes every ``config.checkpoint_every`` episodes
            and at the end.
        resume: Continue from ``checkpoint_dir``'s checkpoint (same config and training data
            required).
        strategy: A ``tf.distribute`` strategy; ``meta_batch`` must divide by its replicas.
    """
    tqdm = require("tqdm", "the training progress bar").tqdm
    if train.num_classes < config.n_way:
        raise DataError(f"training set has {train.num_classes} classes; {config.n_way}-way "
                        "episodes need at least that many")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if config.meta_batch % replicas:
        raise ConfigError(f"meta_batch {config.meta_batch} must be a multiple of the "
                          f"{replicas} replicas of the distribution strategy")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = conv4(tuple(train_x.shape[1:]), filters=config.filters)
        learner = make_learner(config, model)
        optimizer = keras.optimizers.Adam(config.learning_rate)
        optimizer.build(learner.variables)
        generator = tf.random.Generator.from_seed(config.seed + 17)  # augmentation stream
    step = make_step(learner, optimizer, config, strategy, generator=generator)
    sampler = EpisodeSampler(train, config.n_way, config.k_shot, config.n_query, seed=config.seed)
    val_episodes = None
    extra: dict[str, Any] = {}
    if val is not None and val_x is not None:
        try:
            # A user's own unseen classes may be few and small: validate on what fits.
            val_way, val_shot, val_query = fit_episode_size(val, config.val_way,
                                                            config.val_shot, 5)
            val_sampler = EpisodeSampler(val, val_way, val_shot, val_query, seed=config.seed + 1,
                                         within_group=config.val_within_group)
        except DataError as exc:
            # The user chose way/shot/query for training; say which other episodes failed.
            raise DataError(
                f"validation on the {val.num_classes} unseen classes needs {config.val_shot}-shot "
                f"episodes of at least 2 classes and 1 query per class: {exc}; hold out more "
                "classes (--test-fraction, --holdout) or add images") from exc
        val_episodes = val_sampler.take(config.val_episodes)
        extra["val_episode"] = {"way": val_way, "shot": val_shot, "query": val_query}
    history: list[dict[str, float]] = []
    start_episode, elapsed_before = 0, 0.0
    ckpt = checkpoint_dir / "checkpoint.npz" if checkpoint_dir else None
    fingerprint = data_fingerprint(train_x, train.labels, train.class_names) if ckpt else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise ConfigError(f"nothing to resume: no checkpoint at {ckpt}")
        state = load_checkpoint(ckpt, learner, optimizer, config, extra=[generator.state],
                                data=fingerprint)
        try:
            sampler.set_state(state["sampler"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"checkpoint {ckpt} has a malformed episode sampler state ({exc}); "
                              "delete it to start afresh, or train without --resume") from exc
        start_episode, elapsed_before = state["episode"], state["seconds"]
        history = state["history"]
    losses: list[float] = []
    accs: list[float] = []
    started = time.perf_counter() - elapsed_before
    bar = tqdm(range(start_episode + 1, config.episodes + 1), desc=f"meta-train {config.algorithm}",
               unit="step", disable=not progress, dynamic_ncols=True, initial=start_episode,
               # A run that only its time budget ends has no meaningful step total; tqdm would
               # take len(range) for None and show 10,000,000 steps and an ETA in months.
               total=float("inf") if config.episodes >= UNLIMITED_EPISODES else config.episodes)
    if log_path:
        # Created only now: a run refused above (bad data, nothing to resume) leaves no folder.
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log_fh = open(log_path, "w", encoding="utf-8") if log_path else None
    if log_fh:
        # The checkpoint's history is the log up to its episode; points logged after it (a run
        # stopped between a log point and its next checkpoint) are logged again below.
        log_fh.writelines(json.dumps(point) + "\n" for point in history)
        log_fh.flush()
    episode = start_episode
    try:
        for episode in bar:
            seconds = time.perf_counter() - started
            frac = episode / config.episodes
            if config.time_budget_s:
                frac = max(frac, seconds / config.time_budget_s)
            optimizer.learning_rate.assign(lr_at(config, frac))
            loss, acc = step(*(tf.constant(a) for a in _task_batch(train_x, sampler, config)))
            losses.append(float(loss))
            accs.append(float(acc))
            out_of_time = bool(config.time_budget_s) and seconds >= config.time_budget_s
            last = episode == config.episodes or out_of_time
            if episode % config.val_every == 0 or last:
                point = {"episode": episode, "loss": float(np.mean(losses[-50:])),
                         "train_acc": float(np.mean(accs[-50:])),
                         "lr": float(optimizer.learning_rate.numpy()),
                         "seconds": round(time.perf_counter() - started, 2)}
                if val_episodes:
                    emb = embed_float(model, val_x, normalize=config.normalize)
                    point["val_acc"] = summarize(episode_accuracies(emb, val_episodes)).mean
                history.append(point)
                if log_fh:
                    log_fh.write(json.dumps(point) + "\n")
                    log_fh.flush()
                postfix = {k: f"{v:.3f}" for k, v in point.items()
                           if k in ("loss", "train_acc", "val_acc")}
                if config.time_budget_s:
                    left = max(0.0, config.time_budget_s - (time.perf_counter() - started))
                    postfix["budget_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
                bar.set_postfix(postfix)
            if ckpt and (last or (config.checkpoint_every and episode % config.checkpoint_every == 0)):
                save_checkpoint(ckpt, learner, optimizer, config, extra=[generator.state],
                                episode=episode, data=fingerprint,
                                seconds=time.perf_counter() - started,
                                sampler=sampler.get_state(), history=history)
            if out_of_time:
                break
    finally:
        bar.close()
        if log_fh:
            log_fh.close()
    # Training normalises with each episode's batch statistics; the moving averages the board
    # uses lag behind the weights. Re-estimate them on training images (cheap; measured +0.7
    # points for a converged ProtoNet, +7 to +13 for short MAML-family runs).
    rng = np.random.default_rng(config.seed)
    recalibrate_batch_norm(model, train_x[rng.choice(len(train_x), min(2000, len(train_x)),
                                                     replace=False)])
    return TrainResult(model, config, history, time.perf_counter() - started, episode, extra)


def save_training(result: TrainResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``model.keras`` and ``train_config.json`` (the log was written while training)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "model.keras", "config": out / "train_config.json"}
    result.model.save(paths["model"])
    paths["config"].write_text(json.dumps(asdict(result.config), indent=2))
    return paths
