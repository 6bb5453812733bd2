"""Bookkeeping shared by the device's outbound queues, and the in-memory queue itself.

:class:`_Bounded` keeps the live records, the in-flight prefix handed out by ``peek`` and the
exact drop counts; :class:`MemoryQueue` is the queue of a reporter without a board home and
:class:`~edgemeta.fleet.spool.Spool` the one on disk. Both bound what is waiting to be sent
(``max_bytes`` of records, optionally ``max_records``) and drop the oldest waiting record first.
Import both from :mod:`edgemeta.fleet.spool`.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from edgemeta.errors import FleetError

__all__ = ["DEFAULT_MAX_BYTES", "RECORD_HEADER", "MemoryQueue", "Record"]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# payload length, crc32(id + payload), record id: the spool's on-disk record header. The memory
# queue counts the same 16 bytes per record so both queues hold the same records under one bound.
RECORD_HEADER = struct.Struct("<IIQ")


@dataclass(frozen=True)
class Record:
    """One queued record: its id (increasing by one per append) and where it lives."""

    id: int
    size: int  # header + payload, what counts against max_bytes
    segment: int  # first id of the segment file holding it (-1 in memory)
    offset: int
    payload: bytes | None = None  # kept only by MemoryQueue


class _Bounded:
    """Bookkeeping shared by both queues: live records, the in-flight prefix, drops."""

    def __init__(self, max_bytes: int, max_records: int | None) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise FleetError(f"spool max_bytes must be a positive integer, got {max_bytes!r}")
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise FleetError(f"spool max_records must be a positive integer or None, "
                             f"got {max_records!r}")
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._live: deque[Record] = deque()
        self._inflight = 0  # the first _inflight records of _live were handed out by peek()
        self._waiting_bytes = 0  # bytes of live records not in flight
        self.dropped = 0  # lifetime (persisted by Spool)
        self.dropped_since_open = 0

    def __len__(self) -> int:
        """Live records: waiting plus in flight."""
        return len(self._live)

    @property
    def waiting(self) -> int:
        """Records not yet handed out by :meth:`peek`."""
        return len(self._live) - self._inflight

    @property
    def inflight(self) -> int:
        """Records handed out by :meth:`peek` and neither acknowledged nor released."""
        return self._inflight

    @property
    def waiting_bytes(self) -> int:
        """Bytes (headers included) of the waiting records; at most ``max_bytes``."""
        return self._waiting_bytes

    def _fits(self, size: int, records: int) -> bool:
        if self._waiting_bytes + size > self.max_bytes:
            return False
        return self.max_records is None or self.waiting + records <= self.max_records

    def _make_room(self, size: int, records: int = 1) -> list[Record]:
        """Drop the oldest waiting records until ``records`` more of ``size`` bytes fit."""
        dropped: list[Record] = []
        while not self._fits(size, records) and self.waiting > 0:
            rec = self._live[self._inflight]
            del self._live[self._inflight]
            self._waiting_bytes -= rec.size
            dropped.append(rec)
        self.dropped += len(dropped)
        self.dropped_since_open += len(dropped)
        return dropped


class MemoryQueue(_Bounded):
    """The same bounded FIFO without a disk, for a reporter that has no board home.

    Args:
        max_bytes: Bound on the waiting records (payload + 16 bytes each, as on disk).
        max_records: Optional bound on the number of waiting records.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_records: int | None = None) -> None:
        super().__init__(max_bytes, max_records)
        self._next_id = 0

    def append(self, payload: bytes) -> list[bytes]:
        """Queue ``payload``; returns the payloads dropped to make room (oldest first)."""
        size = RECORD_HEADER.size + len(payload)
        if size > self.max_bytes:
            self.dropped += 1
            self.dropped_since_open += 1
            return [payload]
        gone = self._make_room(size)
        self._live.append(Record(self._next_id, size, -1, 0, payload))
        self._next_id += 1
        self._waiting_bytes += size
        return [r.payload for r in gone if r.payload is not None]

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Hand out up to ``limit`` of the oldest waiting records as ``(id, payload)``."""
        out: list[tuple[int, bytes]] = []
        while len(out) < limit and self.waiting > 0:
            rec = self._live[self._inflight]
            self._inflight += 1
            self._waiting_bytes -= rec.size
            out.append((rec.id, rec.payload or b""))
        return out

    def ack(self, count: int) -> None:
        """Forget the ``count`` oldest in-flight records (the broker acknowledged them)."""
        count = min(count, self._inflight)
        for _ in range(count):
            self._live.popleft()
        self._inflight -= count

    def release(self) -> None:
        """Put every in-flight record back in front of the waiting ones (the send failed)."""
        for rec in list(self._live)[: self._inflight]:
            self._waiting_bytes += rec.size
        self._inflight = 0

    def close(self) -> None:
        """Nothing to release; present so both queues are interchangeable."""
