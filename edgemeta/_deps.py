"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from edgemeta.errors import MissingDependencyError

_EXTRA_OF = {
    "tensorflow": "host",
    "tqdm": "host",
    "matplotlib": "host",
    "amqtt": "host",
    "prometheus_client": "host",
    "ai_edge_litert": "device",
    "tflite_micro": "mcu",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with an install hint.

    Args:
        module: Dotted module name, e.g. ``"tensorflow"``.
        purpose: What the caller needs it for, shown in the message.
    """
    if module.split(".")[0] in ("tensorflow", "keras"):
        # TensorFlow's C++ INFO/WARNING lines drown the CLI's output; users can still opt in.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_OF.get(top)
        hint = f"pip install 'edgemeta[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(
            f"{purpose} needs the '{top}' package, which is not importable ({exc}); "
            f"install it with: {hint}"
        ) from exc
