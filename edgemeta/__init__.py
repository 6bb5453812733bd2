"""edgemeta: few-shot models from a workstation to a fleet of Raspberry Pi-class boards.

Host side (``edgemeta.data``, ``edgemeta.meta``, ``edgemeta.quantize``) needs ``edgemeta[host]``;
board side (``edgemeta.bundle``, ``edgemeta.runtime``, ``edgemeta.fleet``, ``edgemeta.agent``) never
imports TensorFlow.
"""

from edgemeta.errors import (
    BackendError,
    BoardError,
    BundleError,
    ConfigError,
    DataError,
    EdgemetaError,
    FlashError,
    FleetError,
    InputError,
    MessageError,
    MissingDependencyError,
    StateError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BackendError",
    "BoardError",
    "BundleError",
    "ConfigError",
    "DataError",
    "EdgemetaError",
    "FlashError",
    "FleetError",
    "InputError",
    "MessageError",
    "MissingDependencyError",
    "StateError",
]
