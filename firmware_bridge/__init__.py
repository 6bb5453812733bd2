"""Getting bundles onto boards: atomic install with rollback, and the transports that carry them.

Board-side safe: imports only the stdlib, ``edgemeta.bundle`` and ``edgemeta.boards``.
"""

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
    Transport,
    flash,
    supported_schemes,
    transport_for,
)

__all__ = [
    "PREVIOUS_POINTER",
    "DirTransport",
    "InstallResult",
    "Transport",
    "flash",
    "install_bundle",
    "installed",
    "preflight",
    "rollback",
    "supported_schemes",
    "transport_for",
]
