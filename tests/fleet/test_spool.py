"""The on-disk spool: bound, drop-oldest with exact counts, FIFO, ack after PUBACK, kill safety."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from edgemeta.errors import FleetError
from edgemeta.fleet.spool import MemoryQueue, Spool

HEADER = 16  # length + crc + id


def rec(i: int, size: int = 100) -> bytes:
    """A payload of exactly ``size`` bytes that names its index."""
    head = f"{i:06d}:".encode()
    return head + b"x" * (size - len(head))


def drain(q, limit: int = 1000) -> list[bytes]:
    out = [data for _, data in q.peek(limit)]
    q.ack(len(out))
    return out


@pytest.fixture(params=["disk", "memory"])
def make(request, tmp_path):
    made = []

    def factory(**kw):
        q = (Spool(tmp_path / "spool", fsync=False, **kw) if request.param == "disk"
             else MemoryQueue(**kw))
        made.append(q)
        return q
    yield factory
    for q in made:
        q.close()


def test_fifo_and_ack(make) -> None:
    q = make(max_bytes=10_000)
    for i in range(5):
        assert q.append(rec(i)) == []
    assert len(q) == 5 and q.waiting_bytes == 5 * (100 + HEADER)
    batch = q.peek(2)
    assert [d for _, d in batch] == [rec(0), rec(1)] and q.inflight == 2 and q.waiting == 3
    q.release()  # the send failed: they come again, first
    assert [d for _, d in q.peek(10)] == [rec(i) for i in range(5)]
    q.ack(5)
    assert len(q) == 0 and q.dropped == 0


def test_full_drops_oldest_and_counts_exactly(make) -> None:
    capacity = 7
    q = make(max_bytes=capacity * (100 + HEADER))
    dropped = []
    for i in range(20):
        dropped += q.append(rec(i))
    assert q.dropped == 13 and dropped == [rec(i) for i in range(13)]
    assert drain(q) == [rec(i) for i in range(13, 20)]


def test_max_records_bound(make) -> None:
    q = make(max_bytes=1_000_000, max_records=3)
    for i in range(10):
        q.append(rec(i))
    assert q.dropped == 7 and drain(q) == [rec(7), rec(8), rec(9)]


def test_records_in_flight_are_never_dropped(make) -> None:
    q = make(max_bytes=4 * (100 + HEADER))
    for i in range(4):
        q.append(rec(i))
    assert [d for _, d in q.peek(2)] == [rec(0), rec(1)]  # on the wire, no PUBACK yet
    for i in range(4, 8):
        q.append(rec(i))
    # The bound is on waiting records: 4 and 5 fit, 6 and 7 push out 2 and 3 (the oldest
    # waiting); 0 and 1 stay for their PUBACK.
    assert q.dropped == 2
    q.ack(2)
    assert drain(q) == [rec(i) for i in range(4, 8)]


def test_oversized_record_is_dropped_and_counted(make) -> None:
    q = make(max_bytes=200)
    assert q.append(b"y" * 500) == [b"y" * 500]
    assert q.dropped == 1 and len(q) == 0


def test_bad_bounds_are_refused(tmp_path) -> None:
    with pytest.raises(FleetError, match="max_bytes must be a positive integer"):
        MemoryQueue(max_bytes=0)
    with pytest.raises(FleetError, match="max_records must be a positive integer"):
        Spool(tmp_path, max_records=0)


def test_survives_restart_with_order_and_drop_count(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, max_bytes=5 * (100 + HEADER), fsync=False, segment_bytes=300)
    for i in range(8):
        q.append(rec(i))
    q.ack(len(q.peek(1)))  # 3 acknowledged
    q.close()
    again = Spool(d, max_bytes=5 * (100 + HEADER), fsync=False)
    assert again.dropped == 3 and again.dropped_since_open == 0
    assert drain(again) == [rec(i) for i in range(4, 8)]
    again.close()
    third = Spool(d, fsync=False)
    assert len(third) == 0 and third.dropped == 3
    third.close()


def test_unacknowledged_records_are_sent_again_after_a_crash(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False)
    for i in range(3):
        q.append(rec(i))
    q.peek(3)  # sent, process killed before the PUBACK: nothing acknowledged
    os.close(q._lock_fd)  # what the kernel does when the process dies
    q._lock_fd = None
    again = Spool(d, fsync=False)
    assert drain(again) == [rec(0), rec(1), rec(2)]
    again.close()


def test_drops_behind_in_flight_records_survive_a_restart(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, max_bytes=3 * (100 + HEADER), fsync=False)
    for i in range(3):
        q.append(rec(i))
    q.peek(1)  # rec 0 in flight
    q.append(rec(3))  # fits: the bound is on waiting records
    q.append(rec(4))  # drops rec 1 (the oldest waiting, behind the in-flight one)
    q.close()  # killed before rec 0's PUBACK
    state = json.loads((d / "state.json").read_text())
    assert state["skip"] == [[1, 2]] and state["head"] == 0
    again = Spool(d, max_bytes=3 * (100 + HEADER), fsync=False)
    # rec 0 is waiting again after the restart, so the bound drops the oldest once more.
    assert again.dropped == 2 and again.dropped_since_open == 1
    assert drain(again) == [rec(2), rec(3), rec(4)]
    again.close()


def test_torn_tail_is_cut_off(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False)
    for i in range(4):
        q.append(rec(i))
    q.close()
    (seg,) = sorted(d.glob("*.seg"))
    size = seg.stat().st_size
    for cut in (size - 1, size - 50, size - 100 - HEADER + 3):
        with open(seg, "r+b") as fh:  # a kill in the middle of writing the last record
            fh.truncate(cut)
        again = Spool(d, fsync=False)
        assert [d_ for _, d_ in again.peek(10)] == [rec(0), rec(1), rec(2)]
        again.release()
        again.close()
        assert seg.stat().st_size == 3 * (100 + HEADER)
        size = seg.stat().st_size + 100 + HEADER  # pretend the 4th is there again for the loop
        with open(seg, "ab") as fh:
            fh.write(b"\0" * (100 + HEADER))


def test_damaged_record_and_lost_segment_are_counted(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False, segment_bytes=4096, max_bytes=10**6)
    for i in range(80):  # 116 bytes each: 36 per 4 KiB segment -> 3 segments
        q.append(rec(i))
    q.close()
    segs = sorted(d.glob("*.seg"))
    assert len(segs) == 3
    segs[1].unlink()  # a card error took the middle segment
    again = Spool(d, fsync=False, max_bytes=10**6)
    got = drain(again)
    first, third = int(segs[1].stem), int(segs[2].stem)
    assert again.dropped == third - first
    assert got == [rec(i) for i in range(80) if not first <= i < third]
    again.close()


def test_bit_flip_in_the_middle_cuts_the_segment_and_counts(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False, segment_bytes=4096, max_bytes=10**6)
    for i in range(40):  # 36 in the first segment, 4 in the second
        q.append(rec(i))
    q.close()
    first = sorted(d.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[10 * (100 + HEADER) + 30] ^= 0xFF  # inside record 10's payload
    first.write_bytes(bytes(data))
    again = Spool(d, fsync=False, max_bytes=10**6)
    assert again.dropped == 26  # records 10..35 are gone; 36..39 are in the next segment
    assert drain(again) == [rec(i) for i in range(10)] + [rec(i) for i in range(36, 40)]
    again.close()


def test_acknowledged_segments_are_deleted(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False, segment_bytes=4096, max_bytes=10**6)
    for i in range(200):
        q.append(rec(i))
    assert len(list(d.glob("*.seg"))) >= 5
    drain(q)
    assert len(list(d.glob("*.seg"))) == 1  # only the one still open for writing
    q.close()


def test_disk_full_drops_and_counts_never_raises(tmp_path, monkeypatch) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False)
    q.append(rec(0))
    real_write = q._write

    def full(rid: int, payload: bytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(q, "_write", full)
    assert q.append(rec(1)) == [rec(1)]
    assert q.dropped == 1 and len(q) == 1
    monkeypatch.setattr(q, "_write", real_write)
    q.append(rec(2))
    assert drain(q) == [rec(0), rec(2)]
    q.close()


def test_disk_full_during_the_write_leaves_no_torn_record(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False)
    q.append(rec(0))

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def write(self, blob):
            self.fh.write(blob[:10])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    q._write_fh = HalfWriter(q._write_fh)
    assert q.append(rec(1)) == [rec(1)] and q.dropped == 1
    q._write_fh = q._write_fh.fh
    q.append(rec(2))
    q.close()
    again = Spool(d, fsync=False)
    assert drain(again) == [rec(0), rec(2)]
    again.close()


def test_second_process_on_the_same_spool_is_refused(tmp_path) -> None:
    q = Spool(tmp_path / "spool", fsync=False)
    with pytest.raises(FleetError, match="in use by another process"):
        Spool(tmp_path / "spool", fsync=False)
    q.close()
    Spool(tmp_path / "spool", fsync=False).close()


def test_malformed_state_file_replays_everything(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, fsync=False)
    for i in range(3):
        q.append(rec(i))
    q.ack(len(q.peek(1)))
    q.close()
    Path(d / "state.json").write_text("{not json")
    again = Spool(d, fsync=False)
    assert drain(again) == [rec(0), rec(1), rec(2)]  # re-sent rather than lost
    again.close()


def test_reopening_a_full_spool_keeps_every_record(tmp_path) -> None:
    d = tmp_path / "spool"
    q = Spool(d, max_records=3, fsync=False)
    for i in range(5):
        q.append(rec(i))
    q.close()
    again = Spool(d, max_records=3, fsync=False)
    assert again.dropped == 2 and drain(again) == [rec(2), rec(3), rec(4)]
    again.close()
