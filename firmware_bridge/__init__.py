"""Getting bundles onto boards: atomic install with rollback, and the transports that carry them.

Board-side safe: imports the stdlib, ``edgemeta.bundle``, ``edgemeta.boards`` and the board
runtime (for the install-time health check), never TensorFlow.
"""

from firmware_bridge.boot import Started, start_classifier
from firmware_bridge.checks import SPACE_MARGIN_BYTES
from firmware_bridge.migrate import Migration, migrate_state

from firmware_bridge.install import (
    PREVIOUS_POINTER,
    InstallResult,
    install_bundle,
    installed,
    preflight,
    rollback,
)
from firmware_bridge.transports import (
    DirTransport,
    SSHTransport,
    Transport,
    flash,
    supported_schemes,
    transport_for,
)

__all__ = [
    "SPACE_MARGIN_BYTES",
    "Migration",
    "Started",
    "migrate_state",
    "start_classifier",
    "PREVIOUS_POINTER",
    "DirTransport",
    "InstallResult",
    "SSHTransport",
    "Transport",
    "flash",
    "install_bundle",
    "installed",
    "preflight",
    "rollback",
    "supported_schemes",
    "transport_for",
]
