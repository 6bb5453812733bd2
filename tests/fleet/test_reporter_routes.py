"""The reporter says, per telemetry message, whether it went live or was queued (no broker)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edgemeta.fleet import DeviceReporter, DeviceStatus, Telemetry, free_port
from edgemeta.fleet._reporter_outbox import decode_record
from edgemeta.fleet._reporter_replay import acknowledged


class Routes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[int, str]] = []

    def __call__(self, msg: Telemetry, route: str) -> None:
        with self.lock:
            self.got.append((msg.n, route))

    def count(self, route: str) -> int:
        with self.lock:
            return sum(r == route for _, r in self.got)


def offline_reporter(tmp_path, routes: Routes, **kw) -> DeviceReporter:
    port = free_port()  # nothing listens: the reporter stays offline
    return DeviceReporter(f"mqtt://127.0.0.1:{port}", "pi", fleet="lab", interval_s=60,
                          status=lambda: DeviceStatus(labels=["a"]), on_telemetry=routes, **kw)


def test_offline_telemetry_is_reported_as_queued_and_predicts_the_drops(tmp_path) -> None:
    routes = Routes()
    r = offline_reporter(tmp_path, routes, spool=tmp_path / "spool", spool_max_records=4,
                         spool_fsync=False)
    r.start(wait=False)
    try:
        sent = [r.report() for _ in range(10)]
        assert {n for n, _ in routes.got} >= {m.n for m in sent}
        assert routes.count("offline") == len(routes.got)  # incl. the timer's first one
        # Independent of the reporter's counter: what was queued minus what the bound holds.
        assert r.dropped == routes.count("offline") - 4
    finally:
        r.stop(timeout_s=1)


def test_a_broken_hook_does_not_stop_telemetry(tmp_path) -> None:
    def hook(msg: Telemetry, route: str) -> None:
        raise RuntimeError("boom")

    port = free_port()
    r = DeviceReporter(f"mqtt://127.0.0.1:{port}", "pi", interval_s=60, on_telemetry=hook,
                       spool_max_records=2)
    r.start(wait=False)
    try:
        assert r.report().n >= 0 and r.queued >= 1
    finally:
        r.stop(timeout_s=1)


def test_message_sent_as_the_link_dies_is_requeued_not_lost(tmp_path) -> None:
    """paho closes the socket before calling on_disconnect: a publish in between gets rc
    NO_CONN, and paho's is_published() raises on it. The reporter must queue it again."""
    routes = Routes()
    r = offline_reporter(tmp_path, routes, spool_max_records=10)
    # The state between paho closing the socket and our on_disconnect: online, no socket.
    r._state = "started"
    r._online = True
    session = r.session
    try:
        first, info = r._emit_telemetry()
        assert info is not None and info.rc == mqtt.MQTT_ERR_NO_CONN
        assert not acknowledged(info)
        second, _ = r._emit_telemetry()  # must not trip over the first one's info
        assert routes.got == [(first.n, "live"), (second.n, "live")]
        r._on_disconnect(r._client, None, None, "connection lost", None)
        assert routes.got[2:] == [(first.n, "requeued"), (second.n, "requeued")]
        assert r.queued == 2 and r.dropped == 0 and r.session > session and r.bd_seq == 1
        ns = [decode_record(d)[1]["n"] for _, d in r._outbox.queue.peek(10)]
        assert ns == [first.n, second.n]
    finally:
        r._state = "new"  # never really started: stop() only releases the queue
        r.stop()


def test_requeued_live_messages_count_against_the_bound(tmp_path) -> None:
    routes = Routes()
    r = offline_reporter(tmp_path, routes, spool_max_records=3)
    r._state = "started"
    r._online = True
    try:
        for _ in range(2):
            r._emit_telemetry()  # live, never acknowledged
        r._on_disconnect(r._client, None, None, "connection lost", None)
        for _ in range(4):
            r._emit_telemetry()  # offline
        queued = routes.count("requeued") + routes.count("offline")
        assert queued == 6 and r.dropped == queued - 3 and r.queued == 3
    finally:
        r._state = "new"
        r.stop()


def test_telemetry_queued_behind_while_online_is_not_a_replay(tmp_path) -> None:
    """Only what waited while the reporter was offline is sent with replayed: true; the
    reconnect's fresh telemetry, queued behind the replay, must show as current metrics."""
    routes = Routes()
    r = offline_reporter(tmp_path, routes, spool=tmp_path / "spool", spool_fsync=False)
    try:
        offline = r._emit_telemetry()[0]
        r._online = True  # online, with the offline record still queued
        behind = r._emit_telemetry()[0]
        assert routes.got[-2:] == [(offline.n, "offline"), (behind.n, "behind")]
        records = [decode_record(d) for _, d in r._outbox.queue.peek(10)]
        with r._lock:
            sent = [r._publish_record(kind, fields, True)[0] for kind, fields in records]
            # The same record left in the spool by an earlier run is a replay again.
            kind, fields = records[1]
            old = r._publish_record(kind, {**fields, "boot": r.boot - 1}, True)[0]
        assert [(m.n, m.replayed) for m in sent] == [(offline.n, True), (behind.n, False)]
        assert old.replayed
    finally:
        r._online = False
        r.stop(timeout_s=1)
