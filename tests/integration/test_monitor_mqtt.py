"""The monitor against real mosquitto: host state, rebirth requests, sequence accounting, shared
subscriptions. Every wait is bounded; the timeouts are ceilings for slow CI, not speed claims.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edgemeta.fleet import (
    Birth,
    Broker,
    DeviceReporter,
    DeviceStatus,
    FleetMonitor,
    Telemetry,
    host_topic,
    topic,
)
from edgemeta.fleet.schema import decode, decode_host_state

pytestmark = pytest.mark.integration

WAIT_S = 10.0


class Raw:
    """A plain paho client that records what it receives."""

    def __init__(self, port: int, *subscriptions: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        for sub in subscriptions:
            self.client.subscribe(sub, qos=1)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.got) >= count, timeout_s)

    def publish(self, topic_name: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic_name, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def raw_factory(mosquitto_broker: Broker) -> Iterator:
    made: list[Raw] = []

    def make(*subs: str) -> Raw:
        r = Raw(mosquitto_broker.port, *subs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def birth(device: str, session: int = 1) -> Birth:
    return Birth(device_id=device, fleet="lab", session=session, ts=1.0, model_version="1.0",
                 model_sha256=None, backend=None, board=None, labels=("a",),
                 agent_version="0.1.0")


def tele(device: str, seq: int, n: int | None = None, session: int = 1) -> Telemetry:
    return Telemetry(device_id=device, fleet="lab", session=session, seq=seq, ts=1.0,
                     uptime_s=1.0, model_version="1.0", model_sha256=None, labels=("a",),
                     n_classes=1, inference_count=0, latency_p50_ms=None, latency_p95_ms=None,
                     rss_bytes=1, accuracy=None, evaluated=0, boot=5, n=seq if n is None else n)


def test_host_state_online_will_and_graceful_offline(mosquitto_broker: Broker,
                                                     raw_factory) -> None:
    watcher = raw_factory(host_topic("mon-a"))
    m = FleetMonitor(mosquitto_broker.url, host_id="mon-a")
    m.start()
    try:
        assert watcher.wait_for(1), watcher.got
        # Cut the TCP connection under paho: the broker publishes the retained Will, then paho
        # reconnects on its own and announces itself again.
        m._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        assert watcher.wait_for(3), watcher.got
    finally:
        m.stop()
    assert watcher.wait_for(4), watcher.got
    states = [decode_host_state(t, p) for t, p, _ in watcher.got[:4]]
    assert [s.online for s in states] == [True, False, True, False]
    assert states[1].ts is None and states[3].ts is not None  # the Will vs the graceful stop
    # It is retained: a device connecting later learns nobody listens now.
    late = raw_factory(host_topic("mon-a"))
    assert late.wait_for(1)
    topic_name, payload, retained = late.got[0]
    assert retained and decode_host_state(topic_name, payload).online is False


def test_one_shot_monitor_leaves_no_retained_host_state(mosquitto_broker: Broker,
                                                        raw_factory) -> None:
    """A transient monitor (fleet status, a roll-out) clears its retained host state on stop."""
    watcher = raw_factory(host_topic("status-ws"))
    with FleetMonitor(mosquitto_broker.url, host_id="status-ws", transient=True) as m:
        assert m.transient and watcher.wait_for(1), watcher.got
    assert watcher.wait_for(2), watcher.got
    assert watcher.got[1][1] == b""  # the retained-clear (a live one comes with retain=0)
    # Nothing is left for a device connecting later; a barrier message proves the broker already
    # sent whatever retained message it had for the subscription.
    late = raw_factory(host_topic("status-ws"), "edgemeta/v1/_barrier")
    late.wait_for(0)
    late.publish("edgemeta/v1/_barrier", b"x")
    assert late.wait_for(1)
    assert [t for t, _, _ in late.got] == ["edgemeta/v1/_barrier"], late.got
    # The monitor itself ignores retained clears: not malformed messages.
    assert m.error_count == 0


def test_gap_over_mqtt_sends_rebirth_command(mosquitto_broker: Broker, raw_factory) -> None:
    device = raw_factory(topic("lab", "pi-gap", "cmd"))
    with FleetMonitor(mosquitto_broker.url, host_id="mon-b") as m:
        device.publish(topic("lab", "pi-gap", "birth"), birth("pi-gap").to_payload())
        for seq in (1, 2, 4):
            device.publish(topic("lab", "pi-gap", "telemetry"), tele("pi-gap", seq).to_payload())
        assert device.wait_for(1), m.stats()
        assert m.wait_until(lambda _: m.stats()["telemetry"] == 3, WAIT_S), m.stats()
        stats = m.stats()
    cmd = decode("cmd", device.got[0][1])
    assert cmd.command == "rebirth" and cmd.host_id == "mon-b"  # type: ignore[union-attr]
    assert "expected seq 3, got 4" in cmd.args["reason"]  # type: ignore[union-attr]
    assert (stats["gaps"], stats["missed"], stats["rebirths_requested"]) == (1, 1, 1)


def test_monitor_accounts_for_every_reporter_message(mosquitto_broker: Broker) -> None:
    status = DeviceStatus(model_version="2.0", labels=("a", "b"), inference_count=3,
                          latency_p50_ms=0.5, latency_p95_ms=0.9)
    with FleetMonitor(mosquitto_broker.url) as m:
        with DeviceReporter(mosquitto_broker.url, "pi-seq", fleet="lab", interval_s=60,
                            status=lambda: status) as r:
            sent = [r.publish_now() for _ in range(300)]  # seq wraps past 255
            last = sent[-1]
            assert m.wait_until(
                lambda _: m.stats()["telemetry_unique"] >= last.n + 1, WAIT_S), m.stats()
        assert m.wait_until(lambda s: s and s[0].state == "offline", WAIT_S)
        stats = m.stats()
        st = m.device("pi-seq")
    assert last.seq == (last.n + 1) % 256  # the birth took 0 and the timer's first message n=0
    assert stats["telemetry_unique"] == stats["telemetry"] == last.n + 1
    assert (stats["gaps"], stats["missed"], stats["duplicates"], stats["errors"]) == (0, 0, 0, 0)
    assert stats["rebirths_requested"] == 0
    assert st is not None and st.born and st.death_reason == "graceful"


def test_shared_subscription_splits_telemetry(mosquitto_broker: Broker, raw_factory) -> None:
    url = mosquitto_broker.url
    devices = [f"pi-{i}" for i in range(5)]
    per_device = 20
    with FleetMonitor(url, share_group="mon", host_id="share-1") as m1, \
            FleetMonitor(url, share_group="mon", host_id="share-2") as m2:
        assert m1.mqtt5 and not m1.detect_gaps
        pub = raw_factory()
        for d in devices:
            pub.publish(topic("lab", d, "birth"), birth(d).to_payload(), retain=True)
        for seq in range(1, per_device + 1):
            for d in devices:
                pub.publish(topic("lab", d, "telemetry"), tele(d, seq).to_payload())
        total = len(devices) * per_device
        both = (m1, m2)
        assert m1.wait_until(
            lambda _: sum(m.stats()["telemetry"] for m in both) >= total, WAIT_S), \
            (m1.stats(), m2.stats())
        s1, s2 = m1.stats(), m2.stats()
        # Births are subscribed without the share: each monitor knows every device.
        assert [s.device_id for s in m1.snapshot()] == devices
        assert [s.device_id for s in m2.snapshot()] == devices
        assert all(s.state == "online" for s in m2.snapshot())
    assert s1["telemetry"] + s2["telemetry"] == total
    assert s1["telemetry"] > 0 and s2["telemetry"] > 0, (s1, s2)
    assert s1["gaps"] == s2["gaps"] == 0 and s1["rebirths_requested"] == 0
    assert s1["errors"] == s2["errors"] == 0


def test_late_monitor_without_retained_birth_asks_for_rebirth(mosquitto_broker: Broker,
                                                             raw_factory) -> None:
    device = raw_factory(topic("lab", "pi-nb", "cmd"))
    with FleetMonitor(mosquitto_broker.url) as m:
        device.publish(topic("lab", "pi-nb", "telemetry"), tele("pi-nb", 9).to_payload())
        assert device.wait_for(1)
        assert m.wait_until(lambda s: bool(s), WAIT_S)
        kinds = [a.kind for a in m.alerts()]
        status = json.loads(json.dumps(m.status_dict()))
    assert json.loads(device.got[0][1])["command"] == "rebirth"
    assert kinds == ["never-birthed"]
    assert status["alerts"][0]["kind"] == "never-birthed"


def test_gap_makes_a_real_reporter_rebirth(mosquitto_broker: Broker, raw_factory) -> None:
    """Monitor -> rebirth command -> DeviceReporter -> reply and a fresh birth."""
    url = mosquitto_broker.url
    replies = raw_factory(topic("lab", "pi-rb", "reply"))
    births = raw_factory(topic("lab", "pi-rb", "birth"))
    with FleetMonitor(url, host_id="mon-rb") as m, \
            DeviceReporter(url, "pi-rb", fleet="lab", interval_s=60) as r:
        first = r.publish_now()
        assert m.wait_until(lambda _: m.stats()["telemetry"] >= first.n + 1, WAIT_S), m.stats()
        # A message with a seq far ahead of the reporter's, as if several were lost on the way.
        forged = tele("pi-rb", (first.seq + 5) % 256, n=10_000, session=r.session)
        replies.publish(topic("lab", "pi-rb", "telemetry"), forged.to_payload())
        assert replies.wait_for(1), m.stats()
        reply = decode("reply", replies.got[0][1])
        assert births.wait_for(2), births.got  # the start-up birth, then the requested one
        after = r.publish_now()
        assert m.wait_until(lambda s: s[0].last_seq == after.seq, WAIT_S), m.snapshot()
        stats = m.stats()
    assert reply.ok and reply.id.startswith("rebirth-mon-rb-")  # type: ignore[union-attr]
    assert stats["gaps"] == 1 and stats["rebirths_requested"] == 1, stats
    second = decode("birth", births.got[1][1])
    assert second.seq == 0 and second.session == r.session  # type: ignore[union-attr]
    # The monitor followed the restarted sequence: no second gap, no second request.
