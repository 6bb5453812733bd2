"""Resumable checkpoints: meta-parameters, BN statistics, optimiser slots, sampler state, history.

One ``.npz`` of plain arrays (no pickle) plus a JSON string, written atomically.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.bundle import atomic_write_bytes
from edgemeta.errors import ConfigError
from edgemeta.meta.config import TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint"]


def _tracked(learner: Any, optimizer: Any, extra: list[Any]) -> list[Any]:
    return (list(learner.backbone.weights) + list(learner.extra_variables)
            + list(optimizer.variables) + list(extra))


def save_checkpoint(path: Path, learner: Any, optimizer: Any, config: TrainConfig, *,
                    episode: int, seconds: float, sampler: dict, history: list[dict],
                    extra: list[Any] = ()) -> None:
    """Write everything needed to continue the run exactly where it stopped.

    ``extra``: further variables to keep, e.g. the augmentation generator's state.
    """
    arrays = {f"v{i}": np.asarray(v.numpy())
              for i, v in enumerate(_tracked(learner, optimizer, list(extra)))}
    state = {"episode": episode, "seconds": seconds, "sampler": sampler, "history": history,
             "config": asdict(config)}
    buf = io.BytesIO()
    np.savez(buf, state=np.array(json.dumps(state)), **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, learner: Any, optimizer: Any, config: TrainConfig,
                    extra: list[Any] = ()) -> dict:
    """Restore variables in place and return the saved state (episode, seconds, sampler, history).

    Raises:
        ConfigError: the checkpoint belongs to a run with another configuration or shape.
    """
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["state"]))
        saved = dict(state["config"])
        current = asdict(config)
        # The episode count and budget may be raised to train longer; nothing else may change.
        changed = sorted(k for k in current if k not in ("episodes", "time_budget_s",
                                                         "checkpoint_every")
                         and saved.get(k) != current[k])
        if changed:
            raise ConfigError(f"checkpoint {path} was made with a different configuration "
                              f"({', '.join(changed)}); resume with the same settings")
        tracked = _tracked(learner, optimizer, list(extra))
        if len([k for k in data.files if k.startswith("v")]) != len(tracked):
            raise ConfigError(f"checkpoint {path} holds another set of variables")
        for i, var in enumerate(tracked):
            value = data[f"v{i}"]
            if tuple(value.shape) != tuple(var.shape):
                raise ConfigError(f"checkpoint {path}: variable {var.name} has shape {value.shape}, "
                                  f"expected {tuple(var.shape)}")
            var.assign(value)
    return state
