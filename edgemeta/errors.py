"""One exception hierarchy for the whole SDK.

Every error says what was wrong and what was expected, so the CLI can print it as one line.
"""

from __future__ import annotations

__all__ = [
    "EdgemetaError",
    "BundleError",
    "BoardError",
    "FlashError",
    "InstallError",
    "SignatureError",
    "ConfigError",
    "DataError",
    "InputError",
    "StateError",
    "BackendError",
    "FleetError",
    "MessageError",
    "MissingDependencyError",
]


class EdgemetaError(Exception):
    """Base class of every error edgemeta raises on purpose."""


class BundleError(EdgemetaError):
    """A bundle is missing, truncated, tampered with or malformed."""


class BoardError(EdgemetaError):
    """An unknown board profile, or a bundle that does not fit a board."""


class FlashError(EdgemetaError):
    """A bundle could not be installed on a board; the previous model stays current."""


class InstallError(FlashError):
    """The board refused or could not complete an install; its previous model stays current.

    Attributes:
        reason: A short machine-readable code for reports and fleet status tables, one of
            ``unsigned``, ``bad-signature``, ``downgrade``, ``board-mismatch``, ``damaged``,
            ``health-check``, ``disk-full``, ``busy``, ``io``, ``conflict``.
    """

    def __init__(self, message: str, reason: str = "io") -> None:
        super().__init__(message)
        self.reason = reason


class SignatureError(BundleError):
    """A bundle is unsigned, signed by an untrusted key, or its signature does not verify."""


class ConfigError(EdgemetaError, ValueError):
    """A training or conversion setting out of range."""


class DataError(EdgemetaError):
    """A dataset folder or archive is missing or not in the expected layout."""


class InputError(EdgemetaError, ValueError):
    """An image or array given to the runtime is not of a kind it accepts."""


class StateError(EdgemetaError):
    """Stored board state (learned prototypes) is unreadable or belongs to another model."""


class BackendError(EdgemetaError):
    """No usable TFLite interpreter, or the requested one is not installed."""


class FleetError(EdgemetaError):
    """A broker could not be reached or started."""


class MessageError(FleetError, ValueError):
    """An MQTT payload or topic that does not follow the telemetry schema."""


class MissingDependencyError(EdgemetaError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
