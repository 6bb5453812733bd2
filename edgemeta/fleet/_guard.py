"""A catch-all for callbacks that run on a network loop (paho's thread or the simulator's loop).

paho 2.x re-raises an exception from ``on_message``/``on_connect``/... (``suppress_exceptions``
is off by default), which ends ``loop_forever`` and with it the client's network thread: no more
messages, no keepalive, no reconnect. One malformed message from any device must not do that, so
every host-side callback is wrapped with :func:`guarded`: the exception is logged with its
traceback and the loop carries on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["guarded"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def guarded(fn: Callable[P, R], what: str) -> Callable[P, R | None]:
    """``fn`` wrapped so that no ``Exception`` escapes; ``what`` names it in the log."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return fn(*args, **kwargs)
        except Exception:  # the network loop must outlive any bad message
            log.exception("%s failed; ignored so the network loop keeps running", what)
            return None

    return wrapper
