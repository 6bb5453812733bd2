"""Reporter session ids that grow across restarts and clock jumps; the labels sent per message.

A monitor drops every message whose session is lower than the last one it saw from the device (a
late message of an old connection). A board without a real-time clock (a Raspberry Pi restores a
saved time at boot, up to an hour early, until NTP answers) would then be invisible after a
restart: its new session ``time.time() * 1000`` is lower than the one before. So the last session
is kept in a small file in the board home and every new one is ``max(now_ms, last + 1)``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from edgemeta.bundle._fs import atomic_write_bytes

__all__ = ["MAX_LABELS_SENT", "MAX_LABEL_BYTES", "SessionClock", "labels_to_send"]

log = logging.getLogger("edgemeta.fleet.reporter")

# Payloads are capped at 64 KiB; a board with thousands of (long) classes must still report. The
# first labels are sent while there are at most MAX_LABELS_SENT and their JSON (as sent, non-ASCII
# escaped as \uXXXX) stays within MAX_LABEL_BYTES; n_classes stays exact.
MAX_LABELS_SENT = 256
MAX_LABEL_BYTES = 32 * 1024


def labels_to_send(labels: Sequence[str]) -> tuple[str, ...]:
    """The longest prefix of ``labels`` within :data:`MAX_LABELS_SENT` and
    :data:`MAX_LABEL_BYTES` (as encoded)."""
    size = 2  # the brackets
    out: list[str] = []
    for label in labels[:MAX_LABELS_SENT]:
        # json.dumps is how the message is encoded (ensure_ascii): count the bytes really sent.
        size += len(json.dumps(label)) + (1 if out else 0)
        if size > MAX_LABEL_BYTES:
            break
        out.append(label)
    return tuple(out)


class SessionClock:
    """Hands out session ids that always grow, also across restarts when given a state file.

    Args:
        path: JSON file keeping the last session (e.g. ``HOME/state/reporter.json``); None keeps
            it in memory only (sessions then grow within the process, and follow the clock
            across restarts).
        device_id: For log messages.
    """

    def __init__(self, path: str | os.PathLike[str] | None, device_id: str) -> None:
        self._path = Path(path) if path is not None else None
        self._device_id = device_id
        self._last = self._load()

    def _load(self) -> int:
        if self._path is None:
            return 0
        try:
            obj = json.loads(self._path.read_bytes())
            last = obj["session"]
            if isinstance(last, int) and not isinstance(last, bool) and last >= 0:
                return last
            raise ValueError(f"session {last!r} is not a non-negative integer")
        except FileNotFoundError:
            return 0
        except Exception as exc:  # noqa: BLE001 - damaged file: fall back to the clock
            log.warning("reporter %s: ignoring the session file %s (%s); sessions follow the "
                        "clock", self._device_id, self._path, exc)
            return 0

    def next(self, at_least: int = 0) -> int:
        """A new session: larger than every one handed out before (and than ``at_least - 1``).

        Persisted before it is returned, so no later process can hand it out again; a state file
        that cannot be written is logged and the session is still returned.
        """
        now_ms = int(time.time() * 1000)
        session = max(now_ms, self._last + 1, at_least)
        self._last = session
        if self._path is not None:
            data = json.dumps({"session": session}).encode()
            try:
                atomic_write_bytes(self._path, data)
            except OSError as exc:
                log.warning("reporter %s: could not save session %d to %s (%s); a restart with "
                            "the clock set back may be ignored by monitors", self._device_id,
                            session, self._path, exc)
        return session
