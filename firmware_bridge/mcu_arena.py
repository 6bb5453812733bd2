"""Tensor-arena size of a model under TensorFlow Lite for Microcontrollers: measured or estimated.

Measured with the ``tflite-micro`` Python interpreter (the same C++ allocator as the firmware
library) by bisection on its ``arena_size``; estimated from the flatbuffer's tensor sizes when that
package is not installed. Part of :mod:`firmware_bridge.mcu`, which re-exports the public names.

Board-side safe: stdlib and the flatbuffer reader at import time; numpy and tflite-micro are
imported by the functions that run the interpreter.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgemeta.errors import FlashError
from firmware_bridge._tflite_schema import parse_model

__all__ = [
    "ARENA_MARGIN_FRACTION",
    "ARENA_MARGIN_MIN",
    "ARENA_ROUND",
    "ArenaSize",
    "arena_info",
    "arena_size",
    "estimate_arena",
    "measure_arena",
    "with_margin",
]

# The Python interpreter measures with reference kernels on a 64-bit host. On the board, pointers
# are 4 bytes (smaller structs) but optimized kernels (CMSIS-NN on Cortex-M, ESP-NN on ESP32-S3)
# request scratch buffers the reference kernels do not, so a margin on top of the measurement.
ARENA_MARGIN_FRACTION = 0.25
ARENA_MARGIN_MIN = 4 * 1024
ARENA_ROUND = 1024
_ALIGN = 16  # TFLite Micro aligns every arena buffer to 16 bytes
_MEASURE_CAP = 64 * 1024 * 1024  # no MCU has more RAM; past this the failure is not the arena
# Estimate of the arena tail (persistent data) per tensor, per op and per output channel (the
# per-channel multipliers and shifts of quantized conv/FC), from the measured Conv-4 layout.
_TAIL_PER_TENSOR, _TAIL_PER_OP, _TAIL_PER_CHANNEL, _TAIL_FIXED = 24, 64, 8, 1024
_PER_CHANNEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


@dataclass(frozen=True)
class ArenaSize:
    """The tensor arena to declare: ``bytes`` = ``raw_bytes`` + safety margin.

    ``method`` is ``"measured"`` (smallest arena tflite-micro accepts, found by bisection) or
    ``"estimated"`` (from the flatbuffer's tensor sizes, when tflite-micro is not installed).
    """

    bytes: int
    raw_bytes: int
    method: str

    def describe(self) -> str:
        how = ("measured with the tflite-micro interpreter" if self.method == "measured"
               else "estimated from the flatbuffer's tensor sizes (tflite-micro not used)")
        return (f"{self.bytes:,} bytes = {self.raw_bytes:,} {how} + "
                f"{ARENA_MARGIN_FRACTION:.0%} margin (at least {ARENA_MARGIN_MIN:,}), "
                f"rounded up to {ARENA_ROUND:,}")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def estimate_arena(model_bytes: bytes) -> int:
    """Estimated tensor arena (no margin) from the flatbuffer alone, without tflite-micro.

    Activations: the largest total size of tensors alive at the same time, each tensor alive from
    the op that writes it to the last op that reads it (graph inputs from the start, outputs to the
    end). TFLite Micro's greedy planner reaches this bound on chain-shaped nets such as Conv-4 and
    can need more on branchy ones. Plus the persistent tail: per tensor, per op and per output
    channel of quantized conv/FC ops.
    """
    info = parse_model(model_bytes)
    n_ops = len(info.operators)
    first: dict[int, int] = {i: 0 for i in info.inputs}
    last: dict[int, int] = {i: n_ops - 1 for i in info.outputs}
    channels = 0
    for k, op in enumerate(info.operators):
        for t in op.outputs:
            first.setdefault(t, k)
            last[t] = max(last.get(t, k), k)
        for t in op.inputs:
            if t >= 0:
                first.setdefault(t, k)
                last[t] = max(last.get(t, k), k)
        if op.op in _PER_CHANNEL_OPS and op.outputs:
            shape = info.tensors[op.outputs[0]].shape
            channels += shape[-1] if shape else 0
    live = [t for t in first if 0 <= t < len(info.tensors) and not info.tensors[t].constant]
    peak = 0
    for k in range(max(n_ops, 1)):
        peak = max(peak, sum(_aligned(info.tensors[t].nbytes) for t in live
                             if first[t] <= k <= last[t]))
    tail = (_TAIL_PER_TENSOR * len(info.tensors) + _TAIL_PER_OP * n_ops
            + _TAIL_PER_CHANNEL * channels + _TAIL_FIXED)
    return peak + tail


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture file descriptor 2 (TFLite Micro logs its errors there from C++, not via Python)."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _tflm(model_bytes: bytes, arena: int) -> Any:
    """A TFLite Micro interpreter that allocated and ran once on zeros, or RuntimeError."""
    import numpy as np

    from edgemeta._deps import require

    runtime = require("tflite_micro", "running a model under TensorFlow Lite for Microcontrollers").runtime
    interp = runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=int(arena))
    detail = interp.get_input_details(0)
    interp.set_input(np.zeros(tuple(detail["shape"]), dtype=detail["dtype"]), 0)
    interp.invoke()
    return interp


def _fits(model_bytes: bytes, arena: int) -> tuple[bool, str]:
    with _captured_stderr() as log:
        try:
            _tflm(model_bytes, arena)
            ok, why = True, ""
        except RuntimeError as exc:
            ok, why = False, str(exc)
    return ok, (why + ": " + " ".join(log[0].split())).strip(": ")


def measure_arena(model_bytes: bytes) -> int:
    """Smallest tensor arena with which TFLite Micro allocates and runs the model (no margin).

    Bisects on ``arena_size`` of the ``tflite-micro`` Python interpreter: allocation fails
    cleanly with a ``RuntimeError`` when the arena is short by even one byte.

    Raises:
        MissingDependencyError: ``tflite-micro`` is not installed.
        FlashError: TFLite Micro cannot run the model with any arena up to 64 MB (the message has
            its own error, e.g. an unsupported op).
    """
    hi = 64 * 1024
    while True:
        ok, why = _fits(model_bytes, hi)
        if ok:
            break
        if hi >= _MEASURE_CAP:
            raise FlashError(f"TFLite Micro cannot run this model even with a {hi // (1024 * 1024)} "
                             f"MB arena ({why}); expected a model of TFLite Micro builtin ops")
        hi *= 4
    lo = 0  # invariant: lo fails (an empty arena always does), hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fits(model_bytes, mid)[0] else (mid, hi)
    return hi


def with_margin(raw: int) -> int:
    """``raw`` arena bytes + the safety margin, rounded up to ``ARENA_ROUND``."""
    extra = max(math.ceil(raw * ARENA_MARGIN_FRACTION), ARENA_MARGIN_MIN)
    return -(-(raw + extra) // ARENA_ROUND) * ARENA_ROUND


def _have_tflm() -> bool:
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return False
    return True


def arena_info(model_bytes: bytes, method: str = "auto") -> ArenaSize:
    """The arena to declare for the model, with the safety margin applied.

    Args:
        model_bytes: The ``.tflite`` flatbuffer.
        method: ``"measure"`` (needs tflite-micro), ``"estimate"``, or ``"auto"``: measure if
            tflite-micro is importable, else estimate.

    Raises:
        ValueError: unknown ``method``.
        MissingDependencyError: ``method="measure"`` without tflite-micro.
    """
    if method not in ("auto", "measure", "estimate"):
        raise ValueError(f"arena method {method!r} unknown; expected auto, measure or estimate")
    if method == "measure" or (method == "auto" and _have_tflm()):
        raw = measure_arena(model_bytes)
        return ArenaSize(with_margin(raw), raw, "measured")
    raw = estimate_arena(model_bytes)
    return ArenaSize(with_margin(raw), raw, "estimated")


def arena_size(model_bytes: bytes) -> int:
    """Bytes of tensor arena to declare: measured (or estimated) need + safety margin."""
    return arena_info(model_bytes).bytes
