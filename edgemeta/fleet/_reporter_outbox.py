"""The reporter's outbound queue: record encoding and exact counting of dropped telemetry.

A record is the JSON of a message without ``session`` and ``seq``: those belong to the
connection that finally sends it, so they are stamped at send time (see
:meth:`DeviceReporter._publish_record`; live-or-queue and replay are in
:mod:`edgemeta.fleet._reporter_replay`). ``boot``, ``n`` and ``ts`` are kept from when the
message was composed, which is what lets the monitor count replayed telemetry exactly once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edgemeta.errors import MessageError
from edgemeta.fleet.spool import MemoryQueue, Spool

__all__ = ["Outbox", "encode_record", "decode_record"]

log = logging.getLogger(__name__)

QUEUED_KINDS = ("telemetry", "reply")
_STAMPED = ("schema", "session", "seq")


def encode_record(kind: str, fields: dict[str, Any]) -> bytes:
    """One queue record: ``{"kind": ..., "fields": {...}}`` without schema/session/seq."""
    body = {k: v for k, v in fields.items() if k not in _STAMPED}
    return json.dumps({"kind": kind, "fields": body}, separators=(",", ":"),
                      allow_nan=False).encode()


def decode_record(data: bytes) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`encode_record`.

    Raises:
        MessageError: Not a record this version wrote.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"queued record is not JSON: {exc}") from None
    if not (isinstance(obj, dict) and obj.get("kind") in QUEUED_KINDS
            and isinstance(obj.get("fields"), dict)):
        raise MessageError("queued record is not {\"kind\": \"telemetry\"|\"reply\", "
                           "\"fields\": {...}}")
    return obj["kind"], obj["fields"]


class Outbox:
    """The queue (on disk or in memory) plus the rule for what counts as dropped telemetry.

    Args:
        queue: Where records wait.
        boot: The reporter's boot id: only telemetry of this boot counts in its ``dropped``
            field (records of an earlier run still in the spool have their own boot).
    """

    def __init__(self, queue: Spool | MemoryQueue, boot: int) -> None:
        self.queue = queue
        self._boot = boot

    @property
    def on_disk(self) -> bool:
        """True for a :class:`Spool`."""
        return isinstance(self.queue, Spool)

    def append(self, record: bytes) -> int:
        """Queue one record; returns how many telemetry messages of this boot were dropped."""
        return sum(self._is_own_telemetry(d) for d in self.queue.append(record))

    def close(self) -> None:
        """Release the spool (its lock and open file)."""
        self.queue.close()

    def _is_own_telemetry(self, data: bytes) -> bool:
        try:
            kind, fields = decode_record(data)
        except MessageError:
            return False  # unreadable: counted by the spool itself, not as this boot's telemetry
        return kind == "telemetry" and fields.get("boot") == self._boot
