"""Reporter -> broker -> monitor over real MQTT: mosquitto, and the embedded amqtt broker.

Every wait is bounded; the timeouts are generous ceilings for slow CI, not performance claims.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgemeta.errors import FleetError
from edgemeta.fleet import (
    Broker,
    DeviceReporter,
    DeviceState,
    DeviceStatus,
    FleetMonitor,
    start_broker,
    topic,
)
from tests.conftest import require_module

pytestmark = pytest.mark.integration

WAIT_S = 10.0
REPO = Path(__file__).resolve().parents[2]

STATUS = DeviceStatus(model_version="1.2.0", model_sha256="cd" * 32, labels=["cat", "dog"],
                      inference_count=5, latency_p50_ms=0.7, latency_p95_ms=1.2, accuracy=0.75,
                      evaluated=4)


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each basic-path test runs against both brokers."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto_broker")
        return
    require_module("amqtt", reason="the embedded broker needs amqtt (edgemeta[host])")
    b = start_broker("embedded")
    try:
        yield b
    finally:
        b.stop()


def reporter(url: str, device: str = "pi-01", **kw: object) -> DeviceReporter:
    # A long interval: tests drive telemetry with publish_now(), so seq is deterministic apart
    # from the single message the timer sends at start.
    kw.setdefault("interval_s", 60.0)
    return DeviceReporter(url, device, fleet="lab", status=lambda: STATUS, board="rpi4",
                          backend="ai_edge_litert", keepalive_s=2, connect_timeout_s=5,
                          **kw)  # type: ignore[arg-type]


def state_is(device: str, state: str, **fields: object):
    """Predicate for wait_until: device present in ``state`` and with these field values."""
    def check(states: list[DeviceState]) -> bool:
        for s in states:
            if s.device_id == device:
                return s.state == state and all(getattr(s, k) == v for k, v in fields.items())
        return False
    return check


def seq_of(states: list[DeviceState], device: str) -> int:
    """last_seq of ``device`` in a snapshot, -1 when unknown."""
    for s in states:
        if s.device_id == device and s.last_seq is not None:
            return s.last_seq
    return -1


def test_late_monitor_sees_retained_birth(broker: Broker) -> None:
    with reporter(broker.url) as r:
        # start() returned after the birth's PUBACK, so it is retained on the broker already.
        with FleetMonitor(broker.url) as m:
            assert m.wait_until(state_is("pi-01", "online", session=r.session), WAIT_S), \
                m.snapshot()
            st = m.device("pi-01", "lab")
            assert st is not None
            assert (st.model_version, st.board, st.backend) == ("1.2.0", "rpi4", "ai_edge_litert")
            assert st.labels == ("cat", "dog")


def test_telemetry_seq_increases_then_graceful_stop(broker: Broker) -> None:
    with FleetMonitor(broker.url) as m:
        r = reporter(broker.url)
        r.start()
        try:
            sent_seqs, seen = [], []
            for _ in range(3):
                sent = r.publish_now()
                sent_seqs.append(sent.seq)
                # >=: the timer's start-up telemetry may overtake publish_now() and take seq 0.
                assert m.wait_until(lambda s: seq_of(s, "pi-01") >= sent.seq, WAIT_S), \
                    (sent.seq, m.snapshot())
                seen.append(seq_of(m.snapshot(), "pi-01"))
            assert sent_seqs == sorted(set(sent_seqs)) and sent_seqs[0] in (1, 2)  # birth is 0
            assert seen == sorted(set(seen)), seen  # strictly increasing as seen by the monitor
            st = m.device("pi-01")
            assert st is not None
            assert st.inference_count == 5 and st.accuracy == 0.75 and st.evaluated == 4
            assert st.n_classes == 2 and st.rss_bytes and st.rss_bytes > 1_000_000
        finally:
            r.stop()
        assert m.wait_until(state_is("pi-01", "offline", death_reason="graceful"), WAIT_S), \
            m.snapshot()
        assert m.error_count == 0, m.errors


KILLABLE = textwrap.dedent("""
    import sys, time
    from edgemeta.fleet import DeviceReporter
    r = DeviceReporter(sys.argv[1], sys.argv[2], fleet="lab", interval_s=0.5, keepalive_s=2,
                       connect_timeout_s=5)
    r.start()
    print(r.session, flush=True)
    time.sleep(120)  # killed long before
""")


def start_killable(url: str, device: str) -> tuple[subprocess.Popen[str], int]:
    """Run a reporter in a child process; returns it and its session once it is connected."""
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, url, device], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        pytest.fail("reporter subprocess did not start within 30 s")
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not line.isdigit():
        proc.kill()
        pytest.fail(f"reporter subprocess failed: {line!r} {proc.stderr.read()}")  # type: ignore
    return proc, int(line)


def test_sigkill_fires_last_will(broker: Broker) -> None:
    with FleetMonitor(broker.url) as m:
        proc, session = start_killable(broker.url, "pi-kill")
        try:
            assert m.wait_until(state_is("pi-kill", "online", session=session), WAIT_S), \
                m.snapshot()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
            assert m.wait_until(state_is("pi-kill", "offline", death_reason="lost"), WAIT_S), \
                m.snapshot()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT_S)


def test_restart_after_lost_is_online_for_late_monitor(mosquitto_broker: Broker) -> None:
    """The retained Last Will of a killed process must not hide its successor."""
    url = mosquitto_broker.url
    proc, old_session = start_killable(url, "pi-re")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    with FleetMonitor(url) as m:
        assert m.wait_until(state_is("pi-re", "offline", death_reason="lost"), WAIT_S)
        with reporter(url, "pi-re") as r:
            assert r.session > old_session
            assert m.wait_until(state_is("pi-re", "online", session=r.session), WAIT_S)
    # A monitor started now gets both retained messages (old death, new birth) at once.
    with reporter(url, "pi-re") as r2, FleetMonitor(url) as late:
        assert late.wait_until(state_is("pi-re", "online", session=r2.session), WAIT_S), \
            late.snapshot()


def test_reporter_publishes_birth_again_after_broker_restart(mosquitto_broker: Broker) -> None:
    port = mosquitto_broker.port
    with reporter(mosquitto_broker.url, "pi-rb") as r:
        mosquitto_broker.stop()  # retained birth is gone with it (persistence off)
        fresh = start_broker("mosquitto", port=port)
        try:
            with FleetMonitor(fresh.url) as m:
                # Only a re-published birth can make the device appear on the fresh broker.
                assert m.wait_until(state_is("pi-rb", "online", session=r.session), WAIT_S), \
                    m.snapshot()
                sent = r.publish_now()
                assert m.wait_until(lambda s: seq_of(s, "pi-rb") == sent.seq, WAIT_S)
            r.stop()
        finally:
            fresh.stop()


def test_network_drop_fires_will_then_reconnect_is_online(broker: Broker) -> None:
    """After the broker published the Will, the reconnected device must not look stale."""
    with FleetMonitor(broker.url) as m, reporter(broker.url, "pi-net") as r:
        first = r.session
        assert m.wait_until(state_is("pi-net", "online", session=first), WAIT_S)
        # Cut the TCP connection under paho: the broker sees no DISCONNECT and sends the Will.
        r._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        assert m.wait_until(state_is("pi-net", "offline", death_reason="lost"), WAIT_S), \
            m.snapshot()
        # paho reconnects after ~1 s with a new session and a fresh birth + telemetry.
        assert m.wait_until(lambda s: any(
            x.device_id == "pi-net" and x.state == "online" and (x.session or 0) > first
            and x.last_seq is not None for x in s), WAIT_S), m.snapshot()
        assert r.session > first


def test_malformed_publish_is_counted_and_monitor_keeps_working(
    mosquitto_broker: Broker,
) -> None:
    url = mosquitto_broker.url
    with FleetMonitor(url) as m:
        raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        raw.connect("127.0.0.1", mosquitto_broker.port)
        raw.loop_start()
        try:
            raw.publish(topic("lab", "pi-bad", "telemetry"), b"{not json", qos=1).wait_for_publish(5)
            raw.publish("edgemeta/v1/lab/pi-bad/bogus", b"{}", qos=1).wait_for_publish(5)
        finally:
            raw.disconnect()
            raw.loop_stop()
        assert m.wait_until(lambda _: m.error_count >= 2, WAIT_S), m.errors
        topics = sorted(t for t, _ in m.errors)
        assert topics == ["edgemeta/v1/lab/pi-bad/bogus", "edgemeta/v1/lab/pi-bad/telemetry"]
        assert any("not JSON" in e for _, e in m.errors)
        assert m.status_dict()["errors"] == 2
        with reporter(url, "pi-good"):
            assert m.wait_until(state_is("pi-good", "online"), WAIT_S)
        assert [s.device_id for s in m.snapshot()] == ["pi-good"]


def test_mosquitto_broker_lifecycle_and_port_conflict(mosquitto_broker: Broker) -> None:
    assert mosquitto_broker.kind == "mosquitto"
    assert mosquitto_broker.url == f"mqtt://127.0.0.1:{mosquitto_broker.port}"
    workdir = mosquitto_broker.dir  # type: ignore[attr-defined]
    assert workdir.is_dir()
    # A second broker on the same port must fail with mosquitto's own explanation.
    with pytest.raises(FleetError, match="(?s)mosquitto exited with code .*log tail:.*in use"):
        start_broker("mosquitto", port=mosquitto_broker.port)
    mosquitto_broker.stop()
    assert not workdir.exists()
    with pytest.raises(FleetError, match="cannot reach MQTT broker"):
        reporter(mosquitto_broker.url).start()


def test_embedded_broker_lifecycle() -> None:
    require_module("amqtt", reason="the embedded broker needs amqtt (edgemeta[host])")
    b = start_broker("embedded")
    assert b.kind == "embedded" and b.url.startswith("mqtt://127.0.0.1:")
    # No $SYS spam: amqtt's default sys plugin retains $SYS/broker/version at least. Retained
    # messages are sent on SUBSCRIBE, so once our own probe comes back they would have arrived.
    got: list[str] = []
    probe = threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.topic)
        if msg.topic == "probe/x":
            probe.set()

    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    raw.on_message = on_message
    raw.connect("127.0.0.1", b.port)
    raw.loop_start()
    try:
        _, mid = raw.subscribe([("$SYS/#", 1), ("probe/#", 1)])
        raw.publish("probe/x", b"1", qos=1).wait_for_publish(5)
        assert probe.wait(WAIT_S)
    finally:
        raw.disconnect()
        raw.loop_stop()
    assert got == ["probe/x"], got
    with pytest.raises(FleetError, match="embedded broker could not listen"):
        start_broker("embedded", port=b.port)
    b.stop()
    b.stop()  # idempotent
    assert not b._thread.is_alive()  # type: ignore[attr-defined]
    with pytest.raises(FleetError, match="cannot reach MQTT broker"):
        reporter(b.url).start()


def test_unknown_broker_kind() -> None:
    with pytest.raises(FleetError, match="unknown broker kind 'rabbit'"):
        start_broker("rabbit")


class Collector:
    """A raw paho client: records every payload of fleet ``lab`` and can publish anything."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe("edgemeta/v1/lab/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(WAIT_S)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic.rsplit("/", 1)[1], bytes(msg.payload)))

    def find(self, kind: str, pred=lambda m: True) -> dict | None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self.lock:
                for k, payload in self.got:
                    if k == kind and payload and pred(json.loads(payload)):
                        return json.loads(payload)
            time.sleep(0.05)
        return None

    def publish(self, topic_name: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic_name, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _cmd(cid: str) -> bytes:
    return json.dumps({"schema": 2, "id": cid, "command": "report", "args": {}, "ts": 1.0,
                       "host_id": "t"}).encode()


def test_hostile_payloads_do_not_kill_the_reporters_network_thread(
        mosquitto_broker: Broker) -> None:
    nested = b"[" * 30000  # RecursionError in json.loads, far below every size cap
    c = Collector(mosquitto_broker.port)
    try:
        with reporter(mosquitto_broker.url) as r:
            c.publish("edgemeta/v1/_host/evil", nested)  # on paho's thread: host state
            for i in range(20):  # on paho's thread: submit(), "busy" replies when full
                c.publish(topic("lab", "pi-01", "cmd"), nested)
            c.publish(topic("lab", "pi-01", "cmd"), _cmd("after"))
            assert c.find("reply", lambda m: m["id"] == "after" and m["ok"]), c.got[-3:]
            r.publish_now()  # needs paho's thread for the PUBACK
            assert c.find("reply", lambda m: m["id"] == "invalid" and not m["ok"])
    finally:
        c.stop()


def test_retained_command_is_not_carried_out(mosquitto_broker: Broker) -> None:
    c = Collector(mosquitto_broker.port)
    try:
        c.publish(topic("lab", "pi-01", "cmd"), _cmd("stale"), retain=True)
        with reporter(mosquitto_broker.url) as r:
            c.publish(topic("lab", "pi-01", "cmd"), _cmd("fresh"))
            assert c.find("reply", lambda m: m["id"] == "fresh")
            r.flush(2)
        assert not any(k == "reply" and b'"stale"' in p for k, p in c.got), c.got
    finally:
        c.publish(topic("lab", "pi-01", "cmd"), b"", retain=True)  # clear it
        c.stop()


def test_long_non_ascii_labels_still_send_birth_and_exact_n_classes(
        mosquitto_broker: Broker) -> None:
    labels = [f"{i:02d}" + "猫" * 198 for i in range(60)]  # 71,780 bytes of label JSON
    status = DeviceStatus(model_version="1.0.0", labels=labels)
    c = Collector(mosquitto_broker.port)
    try:
        r = DeviceReporter(mosquitto_broker.url, "pi-01", fleet="lab", interval_s=60.0,
                           status=lambda: status, connect_timeout_s=5)
        with r:
            sent = r.publish_now()
        birth = c.find("birth")
        assert birth is not None, "no birth: the device went dark"
        assert birth["interval_s"] == 60.0  # the monitor's floor for the silence limit
        assert 0 < len(birth["labels"]) < 60 and birth["labels"] == labels[:len(birth["labels"])]
        tel = c.find("telemetry", lambda m: m["n"] == sent.n)
        assert tel is not None and tel["n_classes"] == 60
    finally:
        c.stop()
