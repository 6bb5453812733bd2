"""Health check of a bundle on this board: does the runtime load it and compute what it should?

Run before a new model becomes current. The bundle's self-test vector (a known int8 input and the
output the model gave when it was packed) catches a model that loads but computes differently
here (a mismatched runtime build, a broken delegate, a flipped bit the hash missed because it was
in the runtime, not the file).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemeta.bundle import Bundle, SelfTest
from edgemeta.errors import BundleError
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.embedder import input_details, invoke_batch, output_details

__all__ = ["HealthReport", "decode_self_test", "health_check", "self_test_deviation"]


@dataclass(frozen=True)
class HealthReport:
    """The outcome of :func:`health_check`.

    Attributes:
        ok: The model loaded, ran, and matched its self-test vector (if it has one).
        message: One line saying what was checked or what went wrong.
        backend: The interpreter backend used ("" if none could load the model).
        max_deviation: Largest output difference from the self-test vector in LSB (None if the
            bundle carries no vector or the model did not run).
        seconds: Time the check took.
    """

    ok: bool
    message: str
    backend: str = ""
    max_deviation: int | None = None
    seconds: float = 0.0


def decode_self_test(self_test: SelfTest, input_shape: tuple[int, ...],
                     output_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The self-test's input (1, *input_shape) and expected output (1, output_dim) as int8."""
    x = np.frombuffer(base64.b64decode(self_test.input), dtype=np.int8)
    y = np.frombuffer(base64.b64decode(self_test.expected), dtype=np.int8)
    if x.size != int(np.prod(input_shape)) or y.size != output_dim:
        raise BundleError(f"self-test vector holds {x.size} input and {y.size} output values; the "
                          f"model takes {int(np.prod(input_shape))} and gives {output_dim}")
    return x.reshape(1, *input_shape), y.reshape(1, output_dim)


def self_test_deviation(interpreter: Any, self_test: SelfTest) -> int:
    """Run the self-test input through ``interpreter``; return the largest deviation in LSB."""
    interpreter.allocate_tensors()
    inp, out = input_details(interpreter), output_details(interpreter)
    if np.dtype(inp["dtype"]) != np.int8 or np.dtype(out["dtype"]) != np.int8:
        raise BundleError("the self-test needs an int8 model; this one has "
                          f"{np.dtype(inp['dtype'])} input and {np.dtype(out['dtype'])} output")
    shape = tuple(int(d) for d in inp["shape"][1:])
    x, expected = decode_self_test(self_test, shape, int(out["shape"][-1]))
    got = invoke_batch(interpreter, x)
    return int(np.max(np.abs(got.astype(np.int16) - expected.astype(np.int16))))


def health_check(bundle: Bundle, *, backend: str | None = None) -> HealthReport:
    """Load ``bundle``'s model with the board's runtime and run its self-test vector.

    Never raises for a bad model: the answer is in the report, so an installer can roll back and
    say why.
    """
    started = time.perf_counter()
    try:
        loaded = load_interpreter(bundle.model, backend=backend, num_threads=1)
        interp = loaded.interpreter
        interp.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the model's health verdict
        return HealthReport(False, f"the runtime cannot load the model: {exc}",
                            seconds=time.perf_counter() - started)
    self_test = bundle.manifest.self_test
    if self_test is None:
        return HealthReport(True, "model loads (the bundle carries no self-test vector)",
                            loaded.backend, None, time.perf_counter() - started)
    try:
        deviation = self_test_deviation(interp, self_test)
    except Exception as exc:  # noqa: BLE001 - the interpreter raises many kinds
        return HealthReport(False, f"self-test could not run: {exc}", loaded.backend,
                            seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if deviation > self_test.tolerance:
        return HealthReport(False, f"self-test output differs by up to {deviation} LSB from the "
                            f"packed result on {loaded.backend}; at most {self_test.tolerance} "
                            "expected", loaded.backend, deviation, seconds)
    return HealthReport(True, f"self-test passed on {loaded.backend} (max deviation {deviation} "
                        "LSB)", loaded.backend, deviation, seconds)
