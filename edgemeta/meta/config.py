"""One configuration for every meta-learner; written into the bundle's provenance."""

from __future__ import annotations

from dataclasses import dataclass

from edgemeta.errors import ConfigError

__all__ = ["ALGORITHMS", "UNLIMITED_EPISODES", "TrainConfig"]

ALGORITHMS = ("protonet", "maml", "fomaml", "reptile")

# The episode limit of a run that only a time budget ends (no run gets near it).
UNLIMITED_EPISODES = 10**7


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        algorithm: ``protonet``, ``maml`` (second order), ``fomaml`` (first order) or ``reptile``.
        n_way, k_shot, n_query: Episode shape used for training.
        meta_batch: Tasks (episodes) per optimisation step.
        inner_steps, inner_lr: Inner-loop adaptation of the MAML family and Reptile (plain SGD).
            ``inner_lr`` defaults to 0.4 for MAML/FOMAML (Finn et al., Omniglot) and 0.1 for
            Reptile (measured: 0.1 / 0.4 / 1.0 reached 0.73 / 0.64 / 0.60 after 200 tasks).
        episodes: Number of optimisation steps (each sees ``meta_batch`` episodes).
        time_budget_s: Stop after this many seconds of training even if episodes remain.
        learning_rate: Outer (meta) learning rate; halved at 50 % and 75 % of the run (by
            episodes or time, whichever is further along).
        filters: Conv-4 width (= embedding size for 28x28 input).
        normalize: L2-normalise embeddings (the board compares unit vectors), with a learned
            temperature in the training loss.
        augment: Random affine + stroke-thickness augmentation of training images.
        seed: Seeds weights, episode sampling and augmentation.
        deterministic: Make TensorFlow ops deterministic (slower; for exact reruns).
        checkpoint_every: Save a resumable checkpoint every N episodes (0: only at the end).
        val_every, val_way, val_shot, val_episodes: Periodic validation on unseen classes with
            prototypes (the board's method, whatever the algorithm).
        val_within_group: Sample validation classes from one group (alphabet) per episode.
    """

    algorithm: str = "protonet"
    n_way: int = 20
    k_shot: int = 5
    n_query: int = 5
    meta_batch: int = 1
    inner_steps: int = 5
    inner_lr: float | None = None
    episodes: int = 400
    time_budget_s: float | None = None
    learning_rate: float = 1e-3
    filters: int = 64
    normalize: bool = False
    augment: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 0
    val_every: int = 100
    val_way: int = 5
    val_shot: int = 1
    val_episodes: int = 100
    val_within_group: bool = False

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm {self.algorithm!r} unknown; expected one of "
                              f"{', '.join(ALGORITHMS)}")
        minimum = {"n_way": 2, "k_shot": 1, "n_query": 1, "meta_batch": 1, "inner_steps": 1,
                   "episodes": 1, "filters": 1, "checkpoint_every": 0, "val_every": 1,
                   "val_way": 2, "val_shot": 1, "val_episodes": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.inner_lr is None:
            object.__setattr__(self, "inner_lr", 0.1 if self.algorithm == "reptile" else 0.4)
        if self.algorithm == "reptile" and self.inner_steps < 2:
            # The head starts at zero, so the first inner step never moves the backbone.
            raise ConfigError("reptile needs inner_steps >= 2 (its zero-initialised head gives "
                              f"the backbone no gradient in the first step), got {self.inner_steps}")
        for name in ("learning_rate", "inner_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be positive or None, got {self.time_budget_s!r}")
