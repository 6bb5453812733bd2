"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgemeta.errors import MissingDependencyError

_EXTRA_OF = {
    "tensorflow": "host",
    "tqdm": "host",
    "amqtt": "host",
    "ai_edge_litert": "device",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with an install hint.

    Args:
        module: Dotted module name, e.g. ``"tensorflow"``.
        purpose: What the caller needs it for, shown in the message.
    """
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
