"""Resumable checkpoints: meta-parameters, BN statistics, optimiser slots, sampler state, history.

One ``.npz`` of plain arrays (no pickle) plus a JSON string, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.bundle import atomic_write_bytes
from edgemeta.errors import ConfigError
from edgemeta.meta.config import TrainConfig

__all__ = ["data_fingerprint", "load_checkpoint", "save_checkpoint"]

_FIX = "delete it to start afresh, or train without --resume"


def _tracked(learner: Any, optimizer: Any, extra: list[Any]) -> list[Any]:
    return (list(learner.backbone.weights) + list(learner.extra_variables)
            + list(optimizer.variables) + list(extra))


def data_fingerprint(x: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """What a checkpoint remembers of its training data, to refuse resuming on other data.

    Covers the preprocessed images (so the source, the split, rotations and preprocessing),
    the labels and the class names.
    """
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(x), np.ascontiguousarray(labels)):
        digest.update(str((part.dtype.str, part.shape)).encode())
        digest.update(part.tobytes())
    digest.update(json.dumps(list(class_names)).encode())
    return {"classes": len(class_names), "images": len(x), "sha256": digest.hexdigest()}


def save_checkpoint(path: Path, learner: Any, optimizer: Any, config: TrainConfig, *,
                    episode: int, seconds: float, sampler: dict, history: list[dict],
                    extra: list[Any] = (), data: dict | None = None) -> None:
    """Write everything needed to continue the run exactly where it stopped.

    ``extra``: further variables to keep, e.g. the augmentation generator's state.
    ``data``: :func:`data_fingerprint` of the training data.
    """
    arrays = {f"v{i}": np.asarray(v.numpy())
              for i, v in enumerate(_tracked(learner, optimizer, list(extra)))}
    state = {"episode": episode, "seconds": seconds, "sampler": sampler, "history": history,
             "config": asdict(config), "data": data}
    buf = io.BytesIO()
    np.savez(buf, state=np.array(json.dumps(state)), **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def _read_state(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The checkpoint's JSON state and its arrays, or a ConfigError naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        state = json.loads(str(arrays.pop("state")))
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        # np.load reads a non-npz file as a pickle and refuses it with ValueError; an empty
        # file is an EOFError, a truncated archive a BadZipFile.
        raise ConfigError(f"checkpoint {path} is damaged or not an edgemeta checkpoint "
                          f"({exc.__class__.__name__}: {str(exc)[:120] or 'empty'}); "
                          f"{_FIX}") from exc
    shapes = {"episode": int, "seconds": (int, float), "sampler": dict, "history": list,
              "config": dict}
    bad = [k for k, kind in shapes.items()
           if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if bad:
        raise ConfigError(f"checkpoint {path} lacks or has malformed {', '.join(bad)}; {_FIX}")
    return state, arrays


def load_checkpoint(path: Path, learner: Any, optimizer: Any, config: TrainConfig,
                    extra: list[Any] = (), data: dict | None = None) -> dict:
    """Restore variables in place and return the saved state (episode, seconds, sampler, history).

    Nothing is assigned unless the whole checkpoint fits.

    Raises:
        ConfigError: the checkpoint is damaged, or belongs to a run with another configuration,
            shape or (if ``data`` is given and the checkpoint recorded it) other training data.
    """
    state, arrays = _read_state(path)
    saved = dict(state["config"])
    current = asdict(config)
    # The episode count and budget may be raised to train longer; nothing else may change.
    changed = sorted(k for k in current if k not in ("episodes", "time_budget_s",
                                                     "checkpoint_every")
                     and saved.get(k) != current[k])
    if changed:
        raise ConfigError(f"checkpoint {path} was made with a different configuration "
                          f"({', '.join(changed)}); resume with the same settings")
    recorded = state.get("data")
    if data is not None and recorded is not None and recorded != data:
        raise ConfigError(
            f"checkpoint {path} was made on other training data ({recorded.get('classes')} "
            f"classes, {recorded.get('images')} images; now {data['classes']} classes, "
            f"{data['images']} images, or the same counts with other images); resume with the "
            "same --data, --holdout, --test-fraction, --rotations and --seed")
    tracked = _tracked(learner, optimizer, list(extra))
    if len([k for k in arrays if k.startswith("v")]) != len(tracked):
        raise ConfigError(f"checkpoint {path} holds another set of variables; {_FIX}")
    for i, var in enumerate(tracked):
        value = arrays.get(f"v{i}")
        if value is None or tuple(value.shape) != tuple(var.shape):
            raise ConfigError(f"checkpoint {path}: variable {var.name} has shape "
                              f"{None if value is None else value.shape}, expected "
                              f"{tuple(var.shape)}; {_FIX}")
    for i, var in enumerate(tracked):
        var.assign(arrays[f"v{i}"])
    return state
