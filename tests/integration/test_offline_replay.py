"""Nothing lost: mosquitto stops and restarts mid-run; every telemetry within the spool bound
arrives (counted once by (boot, n)), and the drop count is exact beyond it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edgemeta.fleet import (Broker, DeviceReporter, DeviceStatus, HostState, host_topic,
                            start_broker, topic_filter)
from tests.integration.conftest import require_mosquitto

pytestmark = pytest.mark.integration

WAIT_S = 20.0
BOUND = 15  # records the spool keeps while offline


class Counter:
    """A plain paho subscriber: unique (boot, n) of telemetry, plus births and seqs seen."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, int], dict] = {}
        self.copies = 0
        self.births: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self.on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topic_filter("lab"), qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()
        # Retries every 0.05 s while the device backs off from 1 s: after a broker restart the
        # counter is subscribed before the device replays, so nothing is published to nobody.
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.05)
        # A monitor-like host: retained host state online, Last Will offline (schema 2).
        self.state_topic = host_topic("counter")
        self.client.will_set(self.state_topic, HostState("counter", False).to_payload(), qos=1,
                             retain=True)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_subscribe(self, c: mqtt.Client, *args: object) -> None:
        # Subscribed first, then "online": a device waiting for a monitor replays only now.
        c.publish(self.state_topic, HostState("counter", True, time.time()).to_payload(), qos=1,
                  retain=True)
        self.subscribed.set()

    def on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/telemetry"):
                self.copies += 1
                self.seen.setdefault((body["boot"], body["n"]), body)
            elif msg.topic.endswith("/birth"):
                self.births.append(body)

    def wait(self, pred, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def port_broker() -> Iterator[list[Broker]]:
    """A mosquitto the test may replace by another on the same port; all are stopped."""
    require_mosquitto()
    brokers = [start_broker("mosquitto")]
    try:
        yield brokers
    finally:
        for b in brokers:
            b.stop()


def test_broker_restart_replays_spool_and_counts_drops_exactly(tmp_path, port_broker) -> None:
    first = port_broker[0]
    port = first.port
    routes: list[tuple[int, str]] = []  # the reporter's per-message facts (list.append is atomic)
    r = DeviceReporter(first.url, "pi-off", fleet="lab", interval_s=0.05,
                       status=lambda: DeviceStatus(model_version="1.0.0", labels=["a"]),
                       # A stopped broker closes the socket, so the outage is seen at once; a
                       # short keepalive would only add spurious reconnects on a loaded machine.
                       keepalive_s=10, connect_timeout_s=5, spool=tmp_path / "spool",
                       spool_max_records=BOUND, spool_fsync=False, wait_for_monitor=True,
                       on_telemetry=lambda m, route: routes.append((m.n, route)))
    counter = Counter(port)
    assert counter.subscribed.wait(WAIT_S)
    r.start()
    try:
        assert counter.wait(lambda c: len(c.seen) >= 5), "no live telemetry"
        first.stop()  # the broker goes away; telemetry keeps being produced every 0.05 s
        deadline = time.monotonic() + WAIT_S
        while r.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not r.connected
        # Offline long enough to overflow the bound several times over.
        # (a condition, not a fixed sleep: a loaded machine produces telemetry more slowly).
        while r.dropped < 2 * BOUND and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.dropped > 0, "the outage was too short to overflow the spool"
        counter.stop()
        before = dict(counter.seen)
        counter = Counter(port)  # keeps trying until the broker is back
        second = start_broker("mosquitto", port=port)  # a NEW broker on the SAME port
        port_broker.append(second)
        # The reporter reconnects by itself (paho backoff 1 s): birth of the next connection
        # (bd_seq 1), then the spool in order, then live telemetry.
        assert counter.wait(lambda c: any(b["bd_seq"] == 1 for b in c.births)), counter.births
        assert counter.wait(lambda c: any(not t["replayed"] for t in c.seen.values())
                            and r.queued == 0)
        final = r.publish_now()  # carries the drop count after everything above
        # PUBACK means the broker has it, not that the subscriber has read it yet.
        assert counter.wait(lambda c: any(t["n"] == final.n for t in c.seen.values()))
        # Before stop(), which may requeue what is still unacknowledged; after the wait, so the
        # periodic thread has told the route of anything it composed before `final`.
        facts = list(routes)
    finally:
        r.stop()
    counter.stop()
    sent = final.n + 1
    # The periodic thread keeps reporting after publish_now(): what it sent later (n > final.n)
    # is outside the account that `final.dropped` closes.
    before = {k: t for k, t in before.items() if t["n"] <= final.n}
    after = {k: t for k, t in counter.seen.items() if t["n"] <= final.n}
    facts = [(n, route) for n, route in facts if n <= final.n]
    delivered = len(before.keys() | after.keys())
    dropped = final.dropped
    assert dropped == r.dropped > 0
    assert delivered + dropped == sent, (delivered, dropped, sent)
    # Independently of the drop counter, from the reporter's per-message routes: per offline
    # episode (queued offline, or live without PUBACK when the link died; a message that stayed
    # live ends the episode), the oldest beyond the bound are dropped. The start-up may be one
    # (queued until the monitor's host state allows the birth).
    assert sum(route != "requeued" for _, route in facts) == sent  # one first route each
    requeued = {n for n, route in facts if route == "requeued"}
    first = {n: route for n, route in reversed(facts) if route != "requeued"}
    episodes: list[list[int]] = [[]]
    for n in sorted(first):
        if first[n] == "offline" or n in requeued:
            episodes[-1].append(n)
        elif first[n] == "live" and episodes[-1]:
            episodes.append([])
    expected_lost = [n for ep in episodes for n in ep[:max(0, len(ep) - BOUND)]]
    assert dropped == len(expected_lost), (dropped, [len(ep) for ep in episodes])
    # Within the bound, every message arrived: the spool kept exactly the newest BOUND.
    replayed = sorted(t["n"] for t in after.values() if t["replayed"])
    assert len(replayed) >= BOUND and replayed == list(range(replayed[0], replayed[-1] + 1))
    # The dropped ones are exactly the n's missing between the outage and the replay.
    missing = sorted(set(range(sent)) - {n for _, n in before.keys() | after.keys()})
    assert len(missing) == dropped and missing == list(range(missing[0], missing[0] + dropped))
    assert missing == expected_lost  # the oldest of what was queued went first
    # Replayed messages keep boot/n/ts but carry the new connection's session and fresh seqs.
    birth = next(b for b in counter.births if b["bd_seq"] == 1)
    seqs = [t["seq"] for t in sorted(after.values(), key=lambda t: t["n"])]
    assert all(t["session"] == birth["session"] for t in after.values())
    assert seqs[:len(replayed)] == list(range(1, len(replayed) + 1)), seqs
