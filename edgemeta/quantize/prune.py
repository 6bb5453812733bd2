"""Magnitude pruning of the backbone before conversion (host only).

Zeroes the smallest-magnitude fraction of each convolution/dense kernel (BatchNorm untouched).
XNNPACK's int8 kernels do not skip zeros, so pruning alone changes neither latency nor the
stored bundle size; it shrinks what a compressed transfer carries (zeros compress) and is the
first step towards structured pruning. ``benchmarks/prune.py`` measures all three.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemeta._deps import require
from edgemeta.errors import ConfigError

__all__ = ["magnitude_prune", "kernel_sparsity"]


def _kernels(model: Any) -> list[Any]:
    # All weights, not trainable_weights: a frozen backbone (trainable=False) keeps its kernels
    # among the non-trainable weights, and pruning must still reach them.
    return [v for v in model.weights if v.path.endswith("kernel")]


def magnitude_prune(model: Any, sparsity: float) -> Any:
    """A copy of ``model`` whose kernels have their ``sparsity`` smallest-|w| entries set to 0.

    Args:
        model: A Keras model (not modified).
        sparsity: Fraction in [0, 1) of each kernel's entries to zero.
    """
    keras = require("keras", "pruning")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"prune sparsity must be in [0, 1), got {sparsity}")
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    for var in _kernels(pruned):
        w = np.asarray(var.numpy())
        k = int(round(sparsity * w.size))
        if k == 0:
            continue
        # Zero exactly the k smallest |w| (ties broken by position, stably): a magnitude
        # threshold would also zero every weight tied with the k-th, overshooting the sparsity
        # (all of a constant kernel).
        flat = w.ravel().copy()
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
        var.assign(flat.reshape(w.shape).astype(w.dtype))
    return pruned


def kernel_sparsity(model: Any) -> float:
    """Fraction of zero entries over all kernels."""
    kernels = [np.asarray(v.numpy()) for v in _kernels(model)]
    total = sum(k.size for k in kernels)
    return sum(int((k == 0).sum()) for k in kernels) / total if total else 0.0
