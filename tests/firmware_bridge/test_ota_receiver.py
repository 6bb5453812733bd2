"""The board-side OTA state machine, driven directly (no broker): rejections, resume, disk full."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from edgemeta.bundle import BoardHome
from firmware_bridge import install_bundle
from firmware_bridge.ota.protocol import (
    MAX_CHUNK_BYTES, MAX_CHUNKS, Offer, decode_status, encode_chunk, new_transfer_id, ota_topic,
)
from firmware_bridge.ota.chunkset import RangeSet
from firmware_bridge.ota.receiver import OtaReceiver

FLEET, DEVICE = "site-a", "pi-1"
CHUNK = 4096  # MIN_CHUNK_BYTES: the smallest chunks an offer may use


class Board:
    """An OtaReceiver with a fake publish function and a fake clock."""

    def __init__(self, home: Path, **kw) -> None:
        self.now = 0.0
        self.sent = []
        self.rx = OtaReceiver(home, DEVICE, FLEET, self._publish, clock=lambda: self.now, **kw)

    def _publish(self, topic: str, payload: bytes) -> None:
        assert topic == ota_topic(FLEET, DEVICE, "status")
        self.sent.append(decode_status(payload))

    @property
    def last(self):
        return self.sent[-1]

    def offer(self, offer: Offer) -> None:
        self.rx.handle(ota_topic(offer.fleet, offer.device, "offer"), offer.to_payload())

    def chunk(self, payload: bytes, device: str = DEVICE, fleet: str = FLEET) -> None:
        self.rx.handle(ota_topic(fleet, device, "chunk"), payload)


def make_offer(data: bytes, version: str, chunk_bytes: int = CHUNK, **kw) -> Offer:
    return Offer(kw.pop("transfer_id", new_transfer_id()), kw.pop("fleet", FLEET),
                 kw.pop("device", DEVICE), hashlib.sha256(data).hexdigest(), len(data),
                 chunk_bytes, -(-len(data) // chunk_bytes), version, **kw)


def chunk_payload(offer: Offer, data: bytes, i: int) -> bytes:
    size = offer.chunk_bytes
    return encode_chunk(offer.transfer_id, i, data[i * size:(i + 1) * size])


def ota_files(home: Path) -> dict[str, bytes]:
    root = home / "ota"
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def bundle(make_bundle):
    path = make_bundle("2.0.0", seed=2, size=24_000)
    return path.read_bytes()


@pytest.fixture
def installed_home(home, make_bundle):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    return home


def test_full_transfer_installs_and_cleans_up(installed_home, bundle):
    board = Board(installed_home)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    assert board.last.state == "need" and board.last.need == ((0, offer.chunks),)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, bundle, i))
    states = [s.state for s in board.sent]
    assert states[-2:] == ["installing", "installed"]
    assert board.last.version == "2.0.0" and board.last.previous_version == "1.0.0"
    assert board.last.changed and board.last.received == offer.chunks
    assert BoardHome.at(installed_home).current_version() == "2.0.0"
    assert not any((installed_home / "ota").iterdir())  # partial directory removed
    assert sum(board.rx.rejected.values()) == 0


def test_progress_is_acknowledged_every_few_chunks(installed_home, make_bundle):
    data = make_bundle("2.0.0", seed=3, size=80_000).read_bytes()
    board = Board(installed_home, ack_every=4)
    offer = make_offer(data, "2.0.0")
    board.offer(offer)
    for i in range(9):
        board.chunk(chunk_payload(offer, data, i))
    acks = [s for s in board.sent if s.state == "receiving"]
    assert [a.received for a in acks] == [4, 8]


@pytest.mark.parametrize("case", ["malformed", "oversized", "duplicate", "out-of-range",
                                  "unrequested", "foreign-device", "foreign-transfer", "corrupt",
                                  "short"])
def test_bad_chunks_are_rejected_without_touching_the_partial_copy(installed_home, bundle, case):
    board = Board(installed_home)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    board.chunk(chunk_payload(offer, bundle, 0))
    if case == "unrequested":  # a capped `need`: chunks beyond it were not asked for yet
        board.rx._requested = RangeSet([(1, 3)])
    before = ota_files(installed_home)
    good = chunk_payload(offer, bundle, 1)
    payload, kind, device = {
        "malformed": (b"EMOC\x01garbage", "malformed", DEVICE),
        "oversized": (good[:57] + b"x" * (MAX_CHUNK_BYTES + 1), "oversized", DEVICE),
        "duplicate": (chunk_payload(offer, bundle, 0), "duplicate", DEVICE),
        "out-of-range": (encode_chunk(offer.transfer_id, offer.chunks, b"x" * 10), "out-of-order",
                         DEVICE),
        "unrequested": (chunk_payload(offer, bundle, 4), "out-of-order", DEVICE),
        "foreign-device": (good, "foreign", "pi-2"),
        "foreign-transfer": (encode_chunk(new_transfer_id(), 1, bundle[CHUNK:2 * CHUNK]),
                             "foreign-transfer", DEVICE),
        "corrupt": (good[:-1] + bytes([good[-1] ^ 0xFF]), "corrupt", DEVICE),
        "short": (encode_chunk(offer.transfer_id, 1, bundle[CHUNK:CHUNK + 10]), "corrupt", DEVICE),
    }[case]
    sent = len(board.sent)
    board.chunk(payload, device=device)
    assert board.rx.rejected == {kind: 1}
    assert ota_files(installed_home) == before  # nothing written, nothing recorded
    assert len(board.sent) == sent  # and nothing answered
    # The transfer is unharmed: the rest still completes.
    for i in range(1, offer.chunks):
        board.chunk(chunk_payload(offer, bundle, i))
        board.rx._requested = RangeSet([(0, offer.chunks)])  # undo the capped-need simulation
    assert board.last.state == "installed"
    assert BoardHome.at(installed_home).current_version() == "2.0.0"


def test_offers_for_another_device_or_malformed_are_rejected(installed_home, bundle):
    board = Board(installed_home)
    board.offer(make_offer(bundle, "2.0.0", device="pi-2"))  # on pi-2's topic: not ours
    assert board.rx.rejected == {"foreign": 1} and board.sent == []
    offer = make_offer(bundle, "2.0.0", device="pi-2")  # on our topic but naming pi-2
    board.rx.handle(ota_topic(FLEET, DEVICE, "offer"), offer.to_payload())
    assert board.last.state == "rejected" and board.last.reason == "foreign"
    board.rx.handle(ota_topic(FLEET, DEVICE, "offer"), b'{"schema": 1, "transfer_id": 5}')
    assert board.rx.rejected == {"foreign": 2, "malformed": 1}
    assert not (installed_home / "ota").exists()
    assert BoardHome.at(installed_home).current_version() == "1.0.0"


def test_interrupted_transfer_resumes_with_only_the_missing_chunks(installed_home, make_bundle):
    data = make_bundle("2.0.0", seed=4, size=40_000).read_bytes()
    board = Board(installed_home)
    first = make_offer(data, "2.0.0")
    board.offer(first)
    for i in (0, 1, 2, 5, 6):
        board.chunk(chunk_payload(first, data, i))
    # The board restarts (new receiver from disk) and the host re-offers with a new transfer id.
    again = Board(installed_home)
    second = make_offer(data, "2.0.0")
    again.offer(second)
    assert again.last.state == "need"
    assert again.last.need == ((3, 5), (7, second.chunks)) and again.last.received == 5
    for s, e in again.last.need:
        for i in range(s, e):
            again.chunk(chunk_payload(second, data, i))
    assert again.last.state == "installed"
    # A chunk of the old transfer arriving late is harmless.
    again.chunk(chunk_payload(first, data, 3))
    assert again.rx.rejected == {"foreign-transfer": 1}
    assert BoardHome.at(installed_home).current_version() == "2.0.0"


def test_resume_rechecks_chunks_on_disk(installed_home, make_bundle):
    data = make_bundle("2.0.0", seed=5, size=20_000).read_bytes()
    board = Board(installed_home)
    offer = make_offer(data, "2.0.0")
    board.offer(offer)
    for i in range(3):
        board.chunk(chunk_payload(offer, data, i))
    part_dir = next((installed_home / "ota").iterdir())
    with open(part_dir / "bundle.part", "r+b") as fh:  # a flipped bit on the card in chunk 1
        fh.seek(CHUNK + 7)
        fh.write(b"\x00" if data[CHUNK + 7] else b"\x01")
    with open(part_dir / "held.log", "ab") as fh:  # and a torn record from a power cut
        fh.write(b"\x00\x00")
    again = Board(installed_home)
    again.offer(make_offer(data, "2.0.0"))
    assert again.last.need == ((1, 2), (3, offer.chunks))


def test_redelivered_offer_repeats_the_need(installed_home, bundle):
    board = Board(installed_home)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    board.chunk(chunk_payload(offer, bundle, 0))
    board.offer(offer)
    assert board.last.state == "need" and board.last.need == ((1, offer.chunks),)


def test_not_enough_disk_space_rejects_the_offer_and_keeps_the_model(installed_home, bundle,
                                                                     monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    board = Board(installed_home)
    board.offer(make_offer(bundle, "2.0.0"))
    st = board.last
    assert (st.state, st.reason, st.current_version) == ("rejected", "disk-full", "1.0.0")
    assert "1.0.0 stays current" in st.message and "5000 free" in st.message
    assert not (installed_home / "ota").exists() or not any((installed_home / "ota").iterdir())
    assert BoardHome.at(installed_home).current_version() == "1.0.0"


def test_disk_full_while_writing_fails_cleanly(installed_home, bundle, monkeypatch):
    board = Board(installed_home)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    board.chunk(chunk_payload(offer, bundle, 0))
    real = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    board.chunk(chunk_payload(offer, bundle, 1))
    monkeypatch.setattr(os, "pwrite", real)
    st = board.last
    assert (st.state, st.reason) == ("failed", "disk-full")
    assert "disk full" in st.message and "1.0.0 stays current" in st.message
    assert not any((installed_home / "ota").iterdir())  # partial copy removed
    assert BoardHome.at(installed_home).current_version() == "1.0.0"
    board.chunk(chunk_payload(offer, bundle, 2))  # stragglers of the failed transfer
    assert board.rx.rejected["duplicate"] == 1 and board.last.state == "failed"


def test_install_refusal_is_reported_with_its_reason(installed_home, make_bundle):
    data = make_bundle("0.9.0", seed=6).read_bytes()
    board = Board(installed_home)
    offer = make_offer(data, "0.9.0")
    board.offer(offer)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, data, i))
    st = board.last
    assert (st.state, st.reason) == ("failed", "downgrade")
    assert "1.0.0 stays current" in st.message
    assert BoardHome.at(installed_home).current_version() == "1.0.0"
    assert not any((installed_home / "ota").iterdir())


def test_whole_bundle_hash_mismatch_fails_as_damaged(installed_home, bundle):
    board = Board(installed_home)
    offer = make_offer(bundle, "2.0.0")
    lie = Offer(offer.transfer_id, FLEET, DEVICE, "00" * 32, offer.bundle_bytes, CHUNK,
                offer.chunks, "2.0.0")
    board.offer(lie)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(lie, bundle, i))
    assert (board.last.state, board.last.reason) == ("failed", "damaged")
    assert BoardHome.at(installed_home).current_version() == "1.0.0"


def test_already_current_bundle_needs_no_transfer(installed_home, make_bundle):
    data = make_bundle("1.0.0", seed=1).read_bytes()
    board = Board(installed_home)
    board.offer(make_offer(data, "1.0.0"))
    assert board.last.state == "installed" and not board.last.changed
    assert len(board.sent) == 1


def test_stalled_transfer_is_asked_again_a_bounded_number_of_times(installed_home, bundle):
    board = Board(installed_home, stall_s=5.0, max_need_retries=2)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    board.chunk(chunk_payload(offer, bundle, 0))
    board.rx.tick()
    assert len(board.sent) == 1  # not stalled yet
    for _ in range(4):
        board.now += 6.0
        board.rx.tick()
    needs = [s for s in board.sent if s.state == "need"]
    assert len(needs) == 3 and needs[-1].need == ((1, offer.chunks),)
    assert board.rx.active_transfer is None  # gave up, partial copy kept for a later resume
    assert any((installed_home / "ota").iterdir())


def test_installed_callback_gets_the_result(installed_home, bundle):
    results = []
    board = Board(installed_home, on_installed=results.append)
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, bundle, i))
    assert [r.version for r in results] == ["2.0.0"]


def test_complete_partial_copy_installs_on_the_next_offer(installed_home, bundle):
    """A board that died between the last chunk and the install: the re-offer needs no chunk."""
    from firmware_bridge.ota.partial import PartialBundle

    offer = make_offer(bundle, "2.0.0")
    part = PartialBundle.open(installed_home / "ota", offer)
    for i in range(offer.chunks):
        chunk = bundle[i * CHUNK:(i + 1) * CHUNK]
        part.write(i, chunk, hashlib.sha256(chunk).digest())
    part.close()
    board = Board(installed_home)
    board.offer(make_offer(bundle, "2.0.0"))
    assert [s.state for s in board.sent] == ["installing", "installed"]
    assert BoardHome.at(installed_home).current_version() == "2.0.0"


# ---------------------------------------------------------------- bounds, policy, lifecycle
def test_tiny_chunks_are_refused_before_anything_is_allocated(installed_home):
    """1 MiB in 1-byte chunks would be a million chunks (256 MiB: 268 million) of bookkeeping."""
    board = Board(installed_home)
    raw = make_offer(b"x" * CHUNK, "2.0.0").to_payload().replace(
        b'"bundle_bytes":4096,"chunk_bytes":4096,"chunks":1',
        b'"bundle_bytes":1048576,"chunk_bytes":1,"chunks":1048576')
    import tracemalloc

    tracemalloc.start()
    try:
        board.rx.handle(ota_topic(FLEET, DEVICE, "offer"), raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert board.rx.rejected == {"malformed": 1} and board.sent == []
    # Refused from the header alone: no per-chunk bookkeeping (a million entries would be
    # tens of MiB), and nothing on disk.
    assert peak < 1 << 20, peak
    assert not (installed_home / "ota").exists()


def test_the_largest_offer_is_tracked_with_a_bitmap_and_ranges(installed_home, monkeypatch):
    """65,536 chunks (256 MiB in 4 KiB chunks): no per-chunk Python objects on the board."""
    import tracemalloc

    from firmware_bridge.ota import partial

    monkeypatch.setattr(partial, "_preallocate", lambda fd, size: os.ftruncate(fd, size))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 0, 2**40))
    board = Board(installed_home)
    n = MAX_CHUNKS
    offer = Offer(new_transfer_id(), FLEET, DEVICE, "ab" * 32, n * CHUNK, CHUNK, n, "2.0.0")
    tracemalloc.start()
    try:
        board.offer(offer)
        data = b"\x01" * CHUNK
        board.chunk(encode_chunk(offer.transfer_id, 5, data))
        board.rx._publish_need()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert board.last.need == ((0, 5), (6, n)) and board.rx._requested.remaining == n - 1
    assert peak < 512 * 1024, peak


def test_offer_cannot_downgrade_unless_the_board_allows_it(installed_home, make_bundle):
    from edgemeta.bundle import init_home

    data = make_bundle("0.9.0", seed=6).read_bytes()
    board = Board(installed_home)
    offer = make_offer(data, "0.9.0", allow_downgrade=True)  # anyone on the broker can send this
    board.offer(offer)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, data, i))
    st = board.last
    assert (st.state, st.reason) == ("failed", "downgrade")
    assert "refuses downgrades requested over the air" in st.message
    assert "--allow-ota-downgrade" in st.message and "1.0.0 stays current" in st.message
    assert "older than the current version 1.0.0" in st.message
    assert "pass --allow-downgrade" not in st.message  # the sender did: it must not be told to
    assert BoardHome.at(installed_home).current_version() == "1.0.0"
    init_home(installed_home, allow_ota_downgrade=True)  # the board's owner opts in
    offer = make_offer(data, "0.9.0", allow_downgrade=True)
    board.offer(offer)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, data, i))
    assert board.last.state == "installed", board.last.message
    assert BoardHome.at(installed_home).current_version() == "0.9.0"


def test_current_offer_during_a_transfer_closes_it_cleanly(installed_home, bundle, make_bundle):
    board = Board(installed_home)
    running = make_offer(bundle, "2.0.0")
    board.offer(running)
    board.chunk(chunk_payload(running, bundle, 0))
    current = make_bundle("1.0.0", seed=1).read_bytes()
    board.offer(make_offer(current, "1.0.0"))  # "already current": supersedes the transfer
    superseded, answer = board.sent[-2:]
    assert (superseded.transfer_id, superseded.state, superseded.reason) == (
        running.transfer_id, "failed", "superseded")
    assert (answer.state, answer.changed) == ("installed", False)
    assert board.rx.active_transfer is None and board.rx._active is None
    board.chunk(chunk_payload(running, bundle, 1))  # a straggler: dropped, nothing written
    assert board.rx.rejected == {"duplicate": 1}
    assert not any((installed_home / "ota").iterdir())
    board.offer(running)  # its re-offer gets the same final answer
    assert board.last == superseded
    again = make_offer(bundle, "2.0.0")  # a new transfer of the same bundle starts afresh
    board.offer(again)
    for i in range(again.chunks):
        board.chunk(chunk_payload(again, bundle, i))
    assert board.last.state == "installed"
    assert BoardHome.at(installed_home).current_version() == "2.0.0"


def test_current_bundle_is_hashed_again_only_when_it_changed(installed_home, bundle,
                                                            monkeypatch):
    from firmware_bridge.ota import receiver

    calls = []
    real = receiver._file_sha256
    monkeypatch.setattr(receiver, "_file_sha256", lambda p: calls.append(p) or real(p))
    board = Board(installed_home)
    for _ in range(3):
        board.offer(make_offer(bundle, "2.0.0"))  # three new offers, three new transfer ids
    assert len(calls) == 1
    current = BoardHome.at(installed_home).current_bundle()
    os.utime(current, ns=(1, 1))  # the file changed behind our back
    board.offer(make_offer(bundle, "2.0.0"))
    assert len(calls) == 2
    offer = make_offer(bundle, "2.0.0")
    board.offer(offer)
    for i in range(offer.chunks):
        board.chunk(chunk_payload(offer, bundle, i))
    assert board.last.state == "installed"
    board.offer(make_offer(bundle, "2.0.0"))  # the pointer moved: hash the new bundle
    assert len(calls) == 3 and board.last.state == "installed" and not board.last.changed


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_resume_that_cannot_rewrite_its_log_leaks_no_fd(installed_home, bundle, monkeypatch):
    from firmware_bridge.ota import partial

    offer = make_offer(bundle, "2.0.0")
    part = partial.PartialBundle.open(installed_home / "ota", offer)
    part.write(0, bundle[:CHUNK], hashlib.sha256(bundle[:CHUNK]).digest())
    part.close()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partial, "atomic_write_bytes", full)
    before = _open_fds()
    with pytest.raises(OSError):
        partial.PartialBundle.open(installed_home / "ota", offer)
    assert _open_fds() <= before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_stopping_the_board_closes_the_partial_copy(installed_home, bundle):
    from firmware_bridge.ota import BoardOta

    board = BoardOta("mqtt://127.0.0.1:1", installed_home, DEVICE, FLEET, tick_s=None)
    board._started = True  # as if start() had connected
    before = _open_fds()
    offer = make_offer(bundle, "2.0.0")
    board.receiver.handle(ota_topic(FLEET, DEVICE, "offer"), offer.to_payload())
    assert board.receiver.active_transfer == offer.transfer_id and _open_fds() > before
    board.stop()
    assert board.receiver.active_transfer is None and _open_fds() <= before
    assert any((installed_home / "ota").iterdir())  # kept on disk for a later resume
