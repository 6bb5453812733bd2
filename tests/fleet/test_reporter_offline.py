"""Reporter behaviour that needs no broker: queueing while offline, drop counting, commands."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edgemeta.errors import FleetError
from edgemeta.fleet import DeviceReporter, DeviceStatus, free_port
from edgemeta.fleet._reporter_commands import CommandWorker, command_id_of
from edgemeta.fleet._reporter_outbox import decode_record
from edgemeta.fleet.schema import Command


def offline_reporter(tmp_path, **kw) -> DeviceReporter:
    port = free_port()  # nothing listens: the reporter stays offline
    return DeviceReporter(f"mqtt://127.0.0.1:{port}", "pi", fleet="lab", interval_s=60,
                          status=lambda: DeviceStatus(labels=["a"]), **kw)


def test_offline_start_queues_telemetry_with_exact_drops(tmp_path) -> None:
    r = offline_reporter(tmp_path, spool=tmp_path / "spool", spool_max_records=3,
                         spool_fsync=False)
    r.start(wait=False)  # does not raise: a board service keeps trying in the background
    try:
        # The timer's start-up telemetry (n 0) first, so it cannot land among (or after) ours.
        deadline = time.monotonic() + 10
        while r.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.queued == 1, "no start-up telemetry"
        sent = [r.report() for _ in range(8)]
        assert not r.connected and r.queued == 3
        assert [m.n for m in sent] == list(range(1, 9))
        # A message carries the drops before it was queued; queuing it dropped one more.
        assert sent[-1].dropped == r.dropped - 1
        total = sent[-1].n + 1
        assert r.dropped == total - 3
        with pytest.raises(FleetError, match="queued, not sent"):
            r.publish_now()
        with pytest.raises(FleetError, match="not connected"):
            r.publish_birth()
    finally:
        r.stop(timeout_s=1)
    # The newest three are kept on disk for the next start, oldest first.
    again = offline_reporter(tmp_path, spool=tmp_path / "spool", spool_max_records=3,
                             spool_fsync=False)
    try:
        records = [decode_record(d) for _, d in again._outbox.queue.peek(10)]
        assert [k for k, _ in records] == ["telemetry"] * 3
        ns = [f["n"] for _, f in records]
        assert ns == sorted(ns) and ns[-1] >= sent[-1].n
        assert all("seq" not in f and "session" not in f for _, f in records)
    finally:
        again.stop()


def test_in_memory_queue_without_a_home(tmp_path) -> None:
    r = offline_reporter(tmp_path, spool_max_records=2)
    r.start(wait=False)
    try:
        for _ in range(5):
            r.report()
        assert r.queued == 2 and r.dropped >= 3
    finally:
        r.stop(timeout_s=1)
    assert not list(tmp_path.iterdir())  # nothing written anywhere


def test_two_reporters_cannot_share_a_spool(tmp_path) -> None:
    r = offline_reporter(tmp_path, spool=tmp_path / "spool")
    with pytest.raises(FleetError, match="in use by another process"):
        offline_reporter(tmp_path, spool=tmp_path / "spool")
    r.stop()  # never started: releases the spool
    offline_reporter(tmp_path, spool=tmp_path / "spool").stop()


class Replies:
    def __init__(self) -> None:
        self.got: list[tuple[str, bool, dict | None, str | None]] = []

    def __call__(self, cid, ok, result, error) -> None:
        self.got.append((cid, ok, result, error))


def cmd_payload(**fields) -> bytes:
    body = {"schema": 2, "id": "c1", "command": "classify", "args": {}, "ts": 1.0,
            "host_id": "host"}
    body.update(fields)
    return json.dumps(body).encode()


def test_command_worker_replies_to_invalid_commands_without_dispatching() -> None:
    calls: list[Command] = []
    replies = Replies()
    w = CommandWorker(lambda c: calls.append(c) or (True, None, None), replies, "t")
    w.handle(b"{not json")
    w.handle(cmd_payload(command="reboot"))
    w.handle(cmd_payload(id="bad id!", schema=1))
    assert calls == []
    assert [(cid, ok) for cid, ok, _, _ in replies.got] == [("invalid", False), ("c1", False),
                                                             ("invalid", False)]
    assert "not JSON" in replies.got[0][3]
    assert "field 'command'" in replies.got[1][3] and "expected one of" in replies.got[1][3]
    assert "schema version" in replies.got[2][3]


def test_command_worker_dispatches_and_survives_a_broken_handler() -> None:
    replies = Replies()

    def handler(cmd: Command):
        if cmd.id == "boom":
            raise RuntimeError("kaput")
        if cmd.id == "odd":
            return "yes"
        return True, {"label": "cat"}, None

    w = CommandWorker(handler, replies, "t")
    w.start()
    for cid in ("c1", "boom", "odd", "c2"):
        w.submit(cmd_payload(id=cid))
    w.stop(5)
    assert [(cid, ok) for cid, ok, _, _ in replies.got] == [
        ("c1", True), ("boom", False), ("odd", False), ("c2", True)]
    assert replies.got[0][2] == {"label": "cat"}
    assert "classify failed on the device: kaput" in replies.got[1][3]
    assert "expected (bool, dict | None, str | None)" in replies.got[2][3]


def test_command_worker_queue_is_bounded() -> None:
    replies = Replies()
    w = CommandWorker(lambda c: (True, None, None), replies, "t", max_pending=2)
    for cid in ("a", "b", "c", "d"):  # not started: nothing is taken off the queue
        w.submit(cmd_payload(id=cid))
    assert [(cid, ok) for cid, ok, _, _ in replies.got] == [("c", False), ("d", False)]
    assert "device busy" in replies.got[0][3]


def test_command_id_of() -> None:
    assert command_id_of(cmd_payload(id="x-1")) == "x-1"
    assert command_id_of(b"[1]") == "invalid" and command_id_of(b"\xff") == "invalid"
    assert command_id_of(cmd_payload(id="a/b")) == "invalid"


NESTED = b"[" * 30000  # RecursionError in json.loads; far below the 1 MiB command cap


def test_nested_json_command_gets_an_error_reply_and_the_worker_goes_on() -> None:
    replies = Replies()
    w = CommandWorker(lambda c: (True, {"id": c.id}, None), replies, "t")
    w.start()
    try:
        w.submit(NESTED)
        w.submit(b'{"id":"c0","x":' + NESTED + b"}")
        w.submit(cmd_payload(id="next"))
        deadline = time.monotonic() + 5
        while len(replies.got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.alive
    finally:
        w.stop(5)
    assert [(cid, ok) for cid, ok, _, _ in replies.got] == [
        ("invalid", False), ("invalid", False), ("next", True)]
    assert "nested too deeply" in replies.got[0][3]


def test_worker_survives_an_unexpected_error_in_handle(monkeypatch) -> None:
    replies = Replies()
    w = CommandWorker(lambda c: (True, None, None), replies, "t")
    real = w.handle
    calls = []

    def flaky(payload: bytes) -> None:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("bug")
        real(payload)

    monkeypatch.setattr(w, "handle", flaky)
    w.start()
    w.submit(cmd_payload(id="a"))
    w.submit(cmd_payload(id="b"))
    w.stop(5)
    assert [cid for cid, *_ in replies.got] == ["b"]


def test_busy_reply_to_a_nested_command_does_not_raise_on_paho_thread() -> None:
    replies = Replies()
    w = CommandWorker(lambda c: (True, None, None), replies, "t", max_pending=1)
    w.submit(cmd_payload(id="a"))  # not started: the queue is now full
    w.submit(NESTED)  # answered at once, on the caller's (paho's) thread
    assert replies.got[-1][:2] == ("invalid", False) and "device busy" in replies.got[-1][3]
    assert command_id_of(NESTED) == "invalid"
    assert command_id_of(b'{"id":' + b"1" * 5000 + b"}") == "invalid"


def test_stop_is_bounded_overall_with_a_stuck_command(tmp_path) -> None:
    release = threading.Event()

    def stuck(cmd: Command):
        release.wait(60)
        return True, None, None

    r = offline_reporter(tmp_path, command_handler=stuck)
    r.start(wait=False)
    waits: list[tuple[str, float]] = []  # every wait of stop() and the timeout it was given

    def recorded(name: str, wait):
        def call(timeout_s=None, *a, **kw):
            waits.append((name, timeout_s))
            return wait(timeout_s, *a, **kw)
        return call

    returned: list[bool] = []

    def stop() -> None:
        r.stop(timeout_s=1.0)
        returned.append(release.is_set())

    try:
        for i in range(20):  # one runs (stuck), 16 wait: the queue is full
            r._commands.submit(cmd_payload(id=f"c{i}"))
        r.flush = recorded("flush", r.flush)  # type: ignore[method-assign]
        for t in r._threads:
            t.join = recorded(t.name, t.join)  # type: ignore[method-assign]
        r._commands.stop = recorded("commands", r._commands.stop)  # type: ignore
        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        stopper.join(20)  # the command stays stuck for 60 s
        assert not stopper.is_alive(), "stop() waited for the stuck command"
    finally:
        release.set()
    assert returned == [False]  # returned while the command was still stuck
    # Before: flush, each join, the stop marker and the worker join each waited timeout_s.
    # Now one deadline is shared: the flush gets at most half, every later wait what is left
    # minus the quarter (at most 1 s) kept for the graceful death.
    names = [name for name, _ in waits]
    assert names[0] == "flush" and names[-1] == "commands" and len(names) == len(r._threads) + 2
    assert waits[0][1] <= 0.5, waits
    assert all(timeout is not None and 0 <= timeout <= 0.75 for _, timeout in waits[1:]), waits
