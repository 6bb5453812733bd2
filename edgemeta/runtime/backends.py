"""TFLite interpreter backends, tried in order: ai_edge_litert, tflite_runtime, tensorflow.lite.

TensorFlow is imported only when neither lightweight runtime is importable (or it is forced), so a
board never pays for it. ``EDGEMETA_BACKEND`` forces one backend by name.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, NamedTuple

from edgemeta.errors import BackendError

__all__ = ["BACKENDS", "BACKEND_ENV", "LoadedInterpreter", "available_backends", "load_interpreter"]

BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow")
BACKEND_ENV = "EDGEMETA_BACKEND"
_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow",
}
_INSTALL = {
    "ai_edge_litert": "pip install ai-edge-litert   (64-bit boards: aarch64, x86_64)",
    "tflite_runtime": "pip install tflite-runtime 'numpy<2'   (32-bit armv7l boards, Python <= 3.11)",
    "tensorflow": "pip install 'edgemeta[host]'",
}


class LoadedInterpreter(NamedTuple):
    interpreter: Any
    backend: str


def _interpreter_class(backend: str) -> Callable[..., Any]:
    module = importlib.import_module(_MODULES[backend])
    if backend == "tensorflow":
        return module.lite.Interpreter
    return module.Interpreter


def available_backends() -> list[str]:
    """Backends whose module imports here, in preference order (imports TensorFlow only if asked)."""
    found = []
    for name in BACKENDS[:2]:
        try:
            _interpreter_class(name)
        except Exception:  # a broken install raises more than ImportError
            continue
        found.append(name)
    return found


def load_interpreter(model: bytes, backend: str | None = None, num_threads: int = 1) -> LoadedInterpreter:
    """Create an interpreter for ``model`` with the first backend that works.

    Args:
        model: The .tflite flatbuffer.
        backend: Force one of :data:`BACKENDS`; default from ``EDGEMETA_BACKEND`` or automatic.
        num_threads: Interpreter threads.

    Raises:
        BackendError: the forced backend is unknown or not installed, or none is installed.
    """
    forced = backend or os.environ.get(BACKEND_ENV) or None
    if forced is not None and forced not in BACKENDS:
        raise BackendError(f"unknown backend {forced!r}; expected one of {', '.join(BACKENDS)}")
    candidates = (forced,) if forced else BACKENDS
    failures = []
    for name in candidates:
        try:
            cls = _interpreter_class(name)
        except Exception as exc:
            failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
            continue
        try:
            interp = cls(model_content=bytes(model), num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{name} could not load the model: {exc}") from exc
        return LoadedInterpreter(interp, name)
    hints = "; ".join(_INSTALL[name] for name in candidates)
    raise BackendError(
        "no TFLite interpreter is available (" + " | ".join(failures) + f"); install one: {hints}"
    )
