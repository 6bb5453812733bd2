"""The host-side OtaEngine fed with board statuses directly (no broker): it never trusts a board."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from firmware_bridge.ota.protocol import (
    MAX_CHUNKS, Offer, Status, decode_chunk, new_transfer_id, ota_topic,
)
from firmware_bridge.ota.sender import OtaEngine, Transfer

FLEET, DEVICE = "site-a", "pi-1"
CHUNK = 4096


@pytest.fixture
def engine(monkeypatch):
    """An engine that is never connected: publish() records instead of sending."""
    e = OtaEngine("mqtt://127.0.0.1:1", window=16)
    e.published = []
    monkeypatch.setattr(e._client, "publish",
                        lambda topic, payload, qos=0: e.published.append((topic, payload)))
    return e


def start_transfer(engine: OtaEngine, chunks: int = 3) -> Transfer:
    data = bytes(i % 251 for i in range(CHUNK * chunks - 100))
    offer = Offer(new_transfer_id(), FLEET, DEVICE, "ab" * 32, len(data), CHUNK, chunks, "2.0.0")
    t = Transfer(FLEET, DEVICE, offer, data, time.monotonic() + 60)
    engine._transfers[(FLEET, DEVICE)] = t
    return t


def status_payload(t: Transfer, **kw) -> bytes:
    raw = json.loads(Status(t.offer.transfer_id, FLEET, DEVICE, "need",
                            chunks=t.offer.chunks).to_payload())
    raw.update(kw)
    return json.dumps(raw).encode()


def deliver(engine: OtaEngine, payload: bytes, device: str = DEVICE) -> None:
    msg = SimpleNamespace(topic=ota_topic(FLEET, device, "status"), payload=payload)
    engine._on_message(engine._client, None, msg)  # must never raise: it runs on paho's thread


def chunks_sent(engine: OtaEngine) -> list[int]:
    return [decode_chunk(p).index for topic, p in engine.published if topic.endswith("/chunk")]


def test_a_need_is_sent_exactly_as_asked(engine):
    t = start_transfer(engine, chunks=3)
    deliver(engine, status_payload(t, need=[[0, 1], [2, 3]]))
    assert chunks_sent(engine) == [0, 2] and t.state == "need"
    assert list(t._queue) == []  # ranges, consumed


@pytest.mark.parametrize("need,chunks", [
    ([[5, 6]], 3),                 # past the offer's chunks, the board's own count agreeing
    ([[0, 3]], 10),                # the board claims another chunk count than the offer
    ([[0, MAX_CHUNKS]], MAX_CHUNKS),  # a huge range: would have queued 65,536 indices
    ([[0, 10**12]], 10**12),      # absurd: refused when decoded
    ([[2, 3], [0, 1]], 3),         # out of order
    ([[0, 2], [1, 3]], 3),         # overlapping: chunks sent twice
])
def test_a_need_that_contradicts_the_offer_is_ignored_and_counted(engine, need, chunks):
    t = start_transfer(engine, chunks=3)
    deliver(engine, status_payload(t, need=need, chunks=chunks))
    assert chunks_sent(engine) == [] and t.state == "offered" and not t._queue
    assert engine.ignored == 1
    # The transfer still works when the board answers properly.
    deliver(engine, status_payload(t, need=[[0, 3]]))
    assert chunks_sent(engine) == [0, 1, 2]


def test_a_large_need_is_queued_as_ranges_and_sent_within_the_window(engine):
    t = start_transfer(engine, chunks=64)
    deliver(engine, status_payload(t, need=[[0, 64]]))
    assert chunks_sent(engine) == list(range(16))  # the window
    assert list(t._queue) == [(16, 64)]  # one range, not 48 entries
    deliver(engine, status_payload(t, state="receiving", need=[], received=8))
    assert chunks_sent(engine) == list(range(24))


def test_an_exception_in_a_callback_never_reaches_paho(engine, monkeypatch, caplog):
    """paho 2.x re-raises callback exceptions out of its loop: the network thread would die."""
    t = start_transfer(engine)

    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(engine, "_apply", boom)
    deliver(engine, status_payload(t, need=[[0, 1]]))
    assert "bug" in caplog.text
    connack = SimpleNamespace(is_failure=True)
    monkeypatch.setattr(engine._waiter, "on_connect", boom)
    engine._on_connect(engine._client, None, None, connack, None)
    engine._on_subscribe(engine._client, None, 1, None, None)
    monkeypatch.setattr(engine, "_check", boom)
    engine._tick()  # the timer thread survives too


def test_board_side_callbacks_never_raise(home, monkeypatch, caplog):
    from firmware_bridge.ota import BoardOta

    board = BoardOta("mqtt://127.0.0.1:1", home, DEVICE, FLEET, tick_s=None)

    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(board.receiver, "handle", boom)
    with caplog.at_level("ERROR", logger="firmware_bridge.ota"):
        board._on_message(board.client, None, SimpleNamespace(topic="t", payload=b""))
    assert "_on_message failed" in caplog.text and "bug" in caplog.text  # logged, not raised
    monkeypatch.setattr(board._waiter, "on_connect", boom)
    board._on_connect(board.client, None, None, SimpleNamespace(is_failure=True), None)
    board._on_subscribe(board.client, None, 1, [SimpleNamespace(is_failure=True)], None)
