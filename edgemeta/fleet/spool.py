"""Bounded, crash-safe outbound queues for the device: on disk (:class:`Spool`) or in memory.

While the broker is unreachable the reporter appends telemetry and replies here; after a
reconnect it replays them in order and acknowledges each one only after the broker's PUBACK, so a
crash in the middle of a replay re-sends rather than loses (the monitor de-duplicates telemetry by
``(boot, n)``).

On disk the spool is a directory of append-only segment files ``<first id>.seg``. Each record is
``length (u32 LE) | crc32 (u32 LE) | id (u64 LE) | payload``; the CRC covers the id and the
payload, and ids increase by one per record, so a missing or damaged segment is visible as a gap
and counted exactly. ``state.json`` (replaced atomically) holds the first live id, the ranges of
ids dropped behind records still in flight, and the lifetime drop count. A torn record at
the end of a segment (a kill during a write) is cut off when the spool is opened.

Both queues bound what is waiting to be sent (``max_bytes`` of records, optionally
``max_records``) and drop the oldest waiting record first when a new one does not fit. Records
handed out by :meth:`Spool.peek` and not yet acknowledged are never dropped: they may be on the
wire already, and dropping them would count a delivered message as lost. Disk errors (a full SD
card) drop the new record and count it; they are logged, never raised into the agent.

The in-memory queue and the bookkeeping both share live in :mod:`edgemeta.fleet._memqueue`;
import them from here.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import BinaryIO

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.errors import FleetError
from edgemeta.fleet._memqueue import DEFAULT_MAX_BYTES, MemoryQueue, Record, _Bounded
from edgemeta.fleet._memqueue import RECORD_HEADER as _HEADER

__all__ = ["DEFAULT_MAX_BYTES", "MemoryQueue", "Spool", "Record"]

log = logging.getLogger(__name__)

# A length field above this is damage, not data: stop reading instead of allocating gigabytes.
MAX_RECORD_BYTES = 4 * 1024 * 1024
_STATE = "state.json"
_SUFFIX = ".seg"


class Spool(_Bounded):
    """The on-disk queue in ``directory`` (created if needed), e.g. ``HOME/spool``.

    Args:
        directory: Where the segment files and ``state.json`` live; one process at a time.
        max_bytes: Bound on the waiting records, headers included. Files on disk hold at most one
            more segment of records that were already sent or dropped, plus records in flight.
        max_records: Optional bound on the number of waiting records.
        segment_bytes: Size at which a new segment file is started; default ``max_bytes // 8``
            (at least 4 KiB), so acknowledged records are deleted in small steps.
        fsync: Flush every append to the card, so a power cut loses nothing acknowledged as
            queued. Off only for tests and benchmarks on a throwaway disk.

    Raises:
        FleetError: Bad bounds, the directory cannot be created, or another process holds it.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 max_records: int | None = None, *, segment_bytes: int | None = None,
                 fsync: bool = True) -> None:
        super().__init__(max_bytes, max_records)
        self.dir = Path(directory)
        self._segment_bytes = max(4096, segment_bytes or max_bytes // 8)
        self._fsync = fsync
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FleetError(f"cannot create spool directory {self.dir} ({exc}): expected a "
                             "writable board home") from None
        self._lock_fd = _lock_dir(self.dir)
        self._next_id = 0
        self._write_seg: int | None = None
        self._write_fh: BinaryIO | None = None
        self._write_size = 0
        self._load()

    # --- public API -----------------------------------------------------------------------------

    def append(self, payload: bytes) -> list[bytes]:
        """Queue ``payload`` on disk; returns the payloads dropped to make room (oldest first).

        Never raises for disk problems: a record that cannot be written is dropped, counted and
        returned in the list.
        """
        size = _HEADER.size + len(payload)
        if size > self.max_bytes or len(payload) > MAX_RECORD_BYTES:
            self._count_lost(1)
            self._persist()
            return [payload]
        gone = self._make_room(size)
        dropped = [self._read_or_empty(r) for r in gone]
        rid = self._next_id
        try:
            seg, offset = self._write(rid, payload)
        except OSError as exc:
            log.warning("spool %s cannot store a record (%s): dropped and counted", self.dir, exc)
            self._count_lost(1)
            self._persist()
            return dropped + [payload]
        self._next_id += 1
        self._live.append(Record(rid, size, seg, offset))
        self._waiting_bytes += size
        if gone:
            self._persist()
        return dropped

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """Hand out up to ``limit`` of the oldest waiting records as ``(id, payload)``.

        They stay on disk until :meth:`ack`; :meth:`release` makes them waiting again. A record
        that no longer reads back (damaged since it was written) is dropped and counted.
        """
        out: list[tuple[int, bytes]] = []
        damaged = False
        while len(out) < limit and self.waiting > 0:
            rec = self._live[self._inflight]
            try:
                data = self._read(rec)
            except (OSError, FleetError) as exc:
                log.warning("spool %s: record %d unreadable (%s): dropped and counted",
                            self.dir, rec.id, exc)
                del self._live[self._inflight]
                self._waiting_bytes -= rec.size
                self._count_lost(1)
                damaged = True
                continue
            self._inflight += 1
            self._waiting_bytes -= rec.size
            out.append((rec.id, data))
        if damaged:
            self._persist()
        return out

    def ack(self, count: int) -> None:
        """Forget the ``count`` oldest in-flight records: the broker acknowledged them."""
        count = min(count, self._inflight)
        if count <= 0:
            return
        for _ in range(count):
            self._live.popleft()
        self._inflight -= count
        self._persist()

    def release(self) -> None:
        """Make every in-flight record waiting again (the connection dropped before PUBACK)."""
        for rec in list(self._live)[: self._inflight]:
            self._waiting_bytes += rec.size
        self._inflight = 0

    def close(self) -> None:
        """Close the open segment and release the directory lock. Records stay on disk."""
        self._close_writer()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # --- disk layout ----------------------------------------------------------------------------

    def _seg_path(self, first_id: int) -> Path:
        return self.dir / f"{first_id:020d}{_SUFFIX}"

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.glob(f"*{_SUFFIX}"):
            try:
                out.append(int(p.stem))
            except ValueError:
                log.warning("spool %s: ignoring unexpected file %s", self.dir, p.name)
        return sorted(out)

    def _write(self, rid: int, payload: bytes) -> tuple[int, int]:
        if self._write_fh is None or self._write_size >= self._segment_bytes:
            self._close_writer()
            self._write_fh = open(self._seg_path(rid), "ab")  # noqa: SIM115 - kept open
            self._write_seg = rid
            self._write_size = self._write_fh.tell()
        fh = self._write_fh
        offset = self._write_size
        blob = _HEADER.pack(len(payload), _crc(rid, payload), rid) + payload
        try:
            fh.write(blob)
            fh.flush()
            if self._fsync:
                os.fsync(fh.fileno())
        except OSError:
            # A partial record would read as a torn tail later; cut it now while we know where.
            try:
                fh.truncate(offset)
                fh.seek(offset)
            except OSError:
                self._close_writer()  # the next start cuts the torn tail off
            raise
        self._write_size = offset + len(blob)
        assert self._write_seg is not None
        return self._write_seg, offset

    def _read(self, rec: Record) -> bytes:
        with open(self._seg_path(rec.segment), "rb") as fh:
            fh.seek(rec.offset)
            head = fh.read(_HEADER.size)
            if len(head) < _HEADER.size:
                raise FleetError(f"record {rec.id} is truncated")
            length, crc, rid = _HEADER.unpack(head)
            data = fh.read(length) if length <= MAX_RECORD_BYTES else b""
        if rid != rec.id or len(data) != length or _crc(rid, data) != crc:
            raise FleetError(f"record {rec.id} does not match its checksum")
        return data

    def _read_or_empty(self, rec: Record) -> bytes:
        try:
            return self._read(rec)
        except (OSError, FleetError):
            return b""  # dropped anyway; only its kind is unknown to the caller

    def _close_writer(self) -> None:
        if self._write_fh is not None:
            try:
                self._write_fh.close()
            except OSError:
                pass
            self._write_fh = None
            self._write_seg = None

    def _load(self) -> None:
        state = self._read_state()
        head = state.get("head", 0)
        skip = [(a, b) for a, b in state.get("skip") or []]

        def was_live(rid: int) -> bool:
            return rid >= head and not any(a <= rid < b for a, b in skip)

        def count_missing(lo: int, hi: int) -> int:
            # Ids are contiguous: whatever live id in [lo, hi) is not on disk was lost.
            lo = max(lo, head)
            n = max(0, hi - lo)
            for a, b in skip:
                n -= max(0, min(b, hi) - max(a, lo))
            return n

        lost = 0
        expected_id: int | None = None
        for seg in self._segments():
            for rec in self._scan(seg):
                if expected_id is not None and rec.id > expected_id:
                    lost += count_missing(expected_id, rec.id)
                expected_id = rec.id + 1
                if was_live(rec.id):
                    self._live.append(rec)
                    self._waiting_bytes += rec.size
        state_next = state.get("next_id", 0)
        if expected_id is not None and state_next > expected_id:
            lost += count_missing(expected_id, state_next)
        self._next_id = max(expected_id or 0, head, state_next)
        if lost:
            log.warning("spool %s: %d queued records were damaged or deleted on disk; counted "
                        "as dropped", self.dir, lost)
            self._count_lost(lost)
        # A crash between writing a record and saving the drop it caused leaves one too many.
        self._make_room(0, 0)
        self._persist()
        if self._live:
            log.info("spool %s: %d records (%d bytes) waiting from an earlier run", self.dir,
                     len(self._live), self._waiting_bytes)

    def _scan(self, seg: int) -> list[Record]:
        """Read a segment's valid records; cut off a torn or damaged tail."""
        path = self._seg_path(seg)
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("spool %s: cannot read %s (%s); its records count as dropped",
                        self.dir, path.name, exc)
            return []
        out: list[Record] = []
        offset = 0
        expected_id = seg
        while offset + _HEADER.size <= len(data):
            length, crc, rid = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if length > MAX_RECORD_BYTES or end > len(data) or rid != expected_id:
                break
            if _crc(rid, data[offset + _HEADER.size:end]) != crc:
                break
            out.append(Record(rid, end - offset, seg, offset))
            offset = end
            expected_id += 1
        if offset < len(data):
            log.warning("spool %s: %s has %d torn or damaged bytes after record %d; cut off",
                        self.dir, path.name, len(data) - offset, expected_id - 1)
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(offset)
            except OSError as exc:
                log.warning("spool %s: cannot truncate %s (%s)", self.dir, path.name, exc)
        return out

    # --- drops, acknowledgement and state -------------------------------------------------------

    def _count_lost(self, n: int) -> None:
        self.dropped += n
        self.dropped_since_open += n

    def _persist(self) -> None:
        self._save_state()
        self._delete_dead_segments()

    def _gaps(self) -> list[list[int]]:
        """Ranges of dropped ids between live records (only behind records in flight)."""
        out = []
        prev: int | None = None
        for rec in self._live:
            if prev is not None and rec.id != prev + 1:
                out.append([prev + 1, rec.id])
            prev = rec.id
        return out

    def _read_state(self) -> dict:
        path = self.dir / _STATE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("spool %s: %s unreadable (%s); replaying everything on disk", self.dir,
                        _STATE, exc)
            return {}
        ok = isinstance(raw, dict) and all(
            type(raw.get(k, 0)) is int and raw.get(k, 0) >= 0
            for k in ("head", "dropped", "next_id"))
        skip = raw.get("skip") if isinstance(raw, dict) else None
        if skip is not None and not (isinstance(skip, list) and all(
                isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
                for r in skip)):
            ok = False
        if not ok:
            log.warning("spool %s: %s malformed; replaying everything on disk", self.dir, _STATE)
            return {}
        self.dropped = raw.get("dropped", 0)
        return raw

    def _save_state(self) -> None:
        head = self._live[0].id if self._live else self._next_id
        state = {"head": head, "next_id": self._next_id, "dropped": self.dropped,
                 "skip": self._gaps()}
        try:
            atomic_write_bytes(self.dir / _STATE, json.dumps(state).encode())
        except OSError as exc:
            # Not fatal: at worst a restart re-sends acknowledged records (de-duplicated).
            log.warning("spool %s: cannot save %s (%s)", self.dir, _STATE, exc)

    def _delete_dead_segments(self) -> None:
        """Delete segments whose every record is acknowledged or dropped (never the open one)."""
        first_live = self._live[0].id if self._live else self._next_id
        segs = self._segments()
        for i, seg in enumerate(segs):
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            if seg == self._write_seg or nxt is None or nxt > first_live:
                break
            try:
                self._seg_path(seg).unlink()
            except OSError as exc:
                log.warning("spool %s: cannot delete %s (%s)", self.dir, seg, exc)


def _crc(rid: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(rid.to_bytes(8, "little")))


def _lock_dir(directory: Path) -> int | None:
    """Hold an exclusive lock on the spool: two agents on one home would interleave records."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a Linux board
        return None
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise FleetError(f"spool {directory} is in use by another process: expected one agent "
                         "per board home") from None
    return fd
