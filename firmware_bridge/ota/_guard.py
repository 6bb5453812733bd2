"""Keep paho's network thread alive: no exception may escape an MQTT callback.

paho-mqtt 2.x re-raises an exception from a callback (``suppress_exceptions`` is off by default)
out of its network loop, which ends the loop thread: every transfer on that connection would
stall. Board-side safe: stdlib only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["never_raises"]

log = logging.getLogger("firmware_bridge.ota")

P = ParamSpec("P")
R = TypeVar("R")


def never_raises(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Wrap a paho callback (or timer body): log an exception instead of raising it."""

    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the network thread must keep running
            log.exception("OTA callback %s failed; the connection keeps running",
                          fn.__qualname__)
            return None

    return guarded
