"""What the agent tells the reporter: :class:`DeviceStatus`, and reading it safely.

Import :class:`DeviceStatus` from :mod:`edgemeta.fleet.reporter` (or :mod:`edgemeta.fleet`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["DeviceStatus", "StatusSource"]

log = logging.getLogger("edgemeta.fleet.reporter")


@dataclass(frozen=True)
class DeviceStatus:
    """What the agent knows about its model and inferences; the reporter adds the rest.

    Attributes:
        model_version: Bundle version, or None when no model is loaded.
        model_sha256: Model digest, or None.
        labels: Enrolled class labels (any sequence; stored as a tuple).
        inference_count: Inferences since the agent started.
        latency_p50_ms: Median latency, None before any inference.
        latency_p95_ms: 95th percentile latency, None before any inference.
        accuracy: Few-shot accuracy on labelled images in [0, 1], None when unknown.
        evaluated: How many labelled images ``accuracy`` is over.
    """

    model_version: str | None = None
    model_sha256: str | None = None
    labels: Sequence[str] = ()
    inference_count: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    accuracy: float | None = None
    evaluated: int = 0

    def __post_init__(self) -> None:
        # A tuple keeps the frozen dataclass really immutable even if the agent passes its list.
        object.__setattr__(self, "labels", tuple(self.labels))


class StatusSource:
    """The agent's status callback; a broken callback must not kill the reporter.

    Args:
        callback: Returns the current :class:`DeviceStatus`; None reports an empty status.
        device_id: For log messages.
    """

    def __init__(self, callback: Callable[[], DeviceStatus] | None, device_id: str) -> None:
        self._callback = callback if callback is not None else DeviceStatus
        self._device_id = device_id
        self._last = DeviceStatus()

    def read(self) -> DeviceStatus:
        """The agent's status now, or the last good one if the callback fails."""
        try:
            st = self._callback()
        except Exception:  # noqa: BLE001 - agent code; report with the last good status
            log.warning("status callback of %s failed; reusing the last status",
                        self._device_id, exc_info=True)
            return self._last
        if not isinstance(st, DeviceStatus):
            log.warning("status callback of %s returned %s, expected DeviceStatus; "
                        "reusing the last status", self._device_id, type(st).__name__)
            return self._last
        self._last = st
        return st
