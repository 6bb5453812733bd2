"""OtaEngine against odd board replies and silent boards, without a broker.

Statuses are delivered straight to the engine's paho callback and the timer is driven with an
explicit clock, so stalls, deadlines and re-offers are checked exactly and without sleeping.
"""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest

from firmware_bridge.ota.protocol import Offer, Status, new_transfer_id, ota_topic
from firmware_bridge.ota.sender import OtaEngine, Transfer

FLEET, DEVICE = "site-a", "pi-1"
CHUNK = 4096


@pytest.fixture
def engine(monkeypatch):
    """A never-connected engine whose publish() records instead of sending."""
    e = OtaEngine("mqtt://127.0.0.1:1", window=16, offer_retry_s=2.0, answer_timeout_s=10.0,
                  stall_s=5.0, max_stalls=2)
    e.published = []
    monkeypatch.setattr(e._client, "publish",
                        lambda topic, payload, qos=0: e.published.append((topic, payload)))
    return e


def start(engine: OtaEngine, chunks: int = 3, device: str = DEVICE) -> Transfer:
    data = bytes(i % 251 for i in range(CHUNK * chunks - 100))
    offer = Offer(new_transfer_id(), FLEET, device, "ab" * 32, len(data), CHUNK, chunks, "2.0.0")
    t = Transfer(FLEET, device, offer, data, time.monotonic() + 60)
    engine._transfers[(FLEET, device)] = t
    return t


def status(t: Transfer, state: str = "need", **kw) -> bytes:
    raw = json.loads(Status(t.offer.transfer_id, FLEET, t.device, state,
                            chunks=t.offer.chunks).to_payload())
    raw.update(kw)
    return json.dumps(raw).encode()


def deliver(engine: OtaEngine, payload: bytes, device: str = DEVICE) -> None:
    engine._on_message(engine._client, None,
                       SimpleNamespace(topic=ota_topic(FLEET, device, "status"), payload=payload))


def check(engine: OtaEngine, t: Transfer, now: float) -> None:
    """One timer tick at ``now`` (the timer holds the engine lock, as here)."""
    with engine._lock:
        engine._check(t, now)


def offers(engine: OtaEngine) -> int:
    return sum(topic.endswith("/offer") for topic, _ in engine.published)


def test_a_duplicate_or_contradicting_final_status_changes_nothing(engine):
    t = start(engine)
    deliver(engine, status(t, "installed", received=3, version="2.0.0", changed=True))
    assert t.ok and t.done.is_set()
    deliver(engine, status(t, "failed", reason="io", message="late"))
    deliver(engine, status(t, "installed", received=3, version="2.0.0", changed=True))
    assert t.ok and t.reason is None and t.message is None and engine.ignored == 2


def test_statuses_of_an_old_transfer_or_another_device_are_ignored(engine):
    t = start(engine)
    other = start(engine, device="pi-2")
    old = json.loads(status(t, "failed", reason="superseded"))
    old["transfer_id"] = new_transfer_id()
    deliver(engine, json.dumps(old).encode())
    # pi-2's status (right transfer id for pi-2) published on pi-1's topic
    deliver(engine, status(other, "failed", reason="io"), device=DEVICE)
    # pi-1's transfer id on pi-2's topic, naming pi-1 in the payload
    deliver(engine, status(t, "failed", reason="io"), device="pi-2")
    assert engine.ignored == 3
    assert t.state == "offered" and other.state == "offered" and not engine.published


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"null", b"[]", b"{}", b'{"schema": 1}',
    b"[" * 6000 + b"]" * 6000,             # nested past the JSON decoder's recursion limit
    b'{"a":' * 2000 + b"1" + b"}" * 2000,   # within the 16 KiB cap
])
def test_malformed_statuses_are_counted_and_ignored_without_an_error(engine, caplog, payload):
    t = start(engine)
    with caplog.at_level(logging.ERROR, logger="firmware_bridge.ota"):
        deliver(engine, payload)
    assert engine.ignored == 1 and t.state == "offered"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_silent_device_is_offered_again_then_fails_offline(engine):
    t = start(engine)
    with engine._lock:
        engine._send_offer(t)  # what send() does
    t0 = t._last_offer
    check(engine, t, t0 + 1.0)
    assert offers(engine) == 1
    check(engine, t, t0 + 2.5)
    assert offers(engine) == 2 and not t.done.is_set()
    check(engine, t, t.started + 10.5)
    assert t.done.is_set() and t.reason == "offline" and "no answer" in t.message


def test_a_device_that_stops_mid_transfer_is_reoffered_then_times_out(engine):
    t = start(engine, chunks=40)
    deliver(engine, status(t, need=[[0, 40]]))
    assert t.chunks_sent == 16  # the window
    deliver(engine, status(t, "receiving", received=8))
    assert t.chunks_sent == 24
    last = t._last_progress
    check(engine, t, last + 4.0)
    assert offers(engine) == 0
    check(engine, t, last + 5.5)  # stall 1: offered again, the board answers what it misses
    assert offers(engine) == 1 and not t.done.is_set()
    deliver(engine, status(t, need=[[8, 40]], received=8))  # resumes from what it holds
    assert t.chunks_sent == 24 + 16
    last = t._last_progress
    check(engine, t, last + 5.5)  # stall 2
    check(engine, t, last + 11.0)  # stall 3 > max_stalls
    assert t.done.is_set() and t.reason == "timeout" and "8/40" in t.message


def test_the_overall_deadline_ends_an_install_that_never_reports(engine):
    t = start(engine)
    deliver(engine, status(t, "installing", received=3))
    check(engine, t, t.deadline - 1)
    assert not t.done.is_set()
    check(engine, t, t.deadline + 0.1)
    assert t.done.is_set() and t.reason == "timeout" and "installing" in t.message
