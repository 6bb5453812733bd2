"""Nothing lost offline: a device publishes at a fixed rate while its broker stops and restarts.

Starts a loopback mosquitto, a DeviceReporter with an on-disk spool of a fixed bound, publishes
telemetry every ``--period`` seconds, stops the broker for ``--outage`` seconds, starts a new one
on the same port, waits for the replay and prints, as its last line::

    sent=S delivered=D dropped=X expected_dropped=E

S is what the device composed (last n + 1), D the unique (boot, n) a plain subscriber received,
X the device's own ``dropped`` field, and E is computed here without the device's drop counter,
from per-message facts: the reporter's ``on_telemetry`` hook says for every telemetry it composes
whether it was handed to paho live or put in the queue (``offline``: not online; ``behind``:
online but older records go first), and names each live message put back in the queue because
the link dropped before its PUBACK (``requeued``). See :func:`expected_drops`: per offline
episode, max(0, messages queued offline or requeued - bound). The script also checks that the n's
missing at the subscriber are exactly the oldest of each episode.

    python benchmarks/offline_replay.py [--period 0.05] [--outage 3] [--bound 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgemeta.fleet import (DeviceReporter, DeviceStatus, HostState, Telemetry,  # noqa: E402
                            host_topic, start_broker, topic_filter)


def expected_drops(facts: list[tuple[int, str]], bound: int) -> list[int]:
    """The n's the bounded queue must drop, from the reporter's per-message routes alone.

    An episode is a run (in n order) of messages queued while offline, plus live ones requeued
    because the link died before their PUBACK; a live message that stayed live ends it (it went
    live, so the queue was empty). Each episode starts with an empty queue and the reconnect's
    first replay step takes the whole queue (bound <= 32 records) in flight right behind the
    birth, so only the episode's messages compete for the bound: the oldest of them beyond it
    are dropped. ``behind`` messages (queued behind the replay) join an empty waiting queue.
    The start-up counts too: with ``wait_for_monitor`` the first messages may be queued until
    the birth.
    """
    first: dict[int, str] = {}
    requeued: set[int] = set()
    for n, route in facts:
        if route == "requeued":
            requeued.add(n)
        else:
            first.setdefault(n, route)
    episodes: list[list[int]] = [[]]
    for n in sorted(first):
        if first[n] == "offline" or n in requeued:
            episodes[-1].append(n)
        elif first[n] == "live" and episodes[-1]:
            episodes.append([])
    return [n for ep in episodes for n in ep[:max(0, len(ep) - bound)]]


class RouteLog:
    """The reporter's per-message facts: (n, route) for each telemetry it composes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: list[tuple[int, str]] = []

    def __call__(self, msg: Telemetry, route: str) -> None:
        with self.lock:
            self.routes.append((msg.n, route))

    def snapshot(self) -> list[tuple[int, str]]:
        with self.lock:
            return list(self.routes)


class Subscriber:
    """Counts unique (boot, n) of telemetry on one broker."""

    def __init__(self, port: int, seen: set[tuple[int, int]], lock: threading.Lock) -> None:
        self.seen, self.lock = seen, lock
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe(topic_filter("bench", kind="telemetry"),
                                                           qos=1)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()
        # Retries every 0.05 s (the device backs off from 1 s): connected to a restarted broker
        # before the device is, so the replay is not published to nobody.
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

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            self.seen.add((body["boot"], body["n"]))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--period", type=float, default=0.05, help="seconds between telemetry")
    ap.add_argument("--before", type=float, default=2.0, help="seconds online before the outage")
    ap.add_argument("--outage", type=float, default=3.0, help="seconds the broker is down")
    ap.add_argument("--bound", type=int, default=20, help="spool bound in records")
    args = ap.parse_args()

    seen: set[tuple[int, int]] = set()
    lock = threading.Lock()
    broker = start_broker("mosquitto")
    port = broker.port
    sub = Subscriber(port, seen, lock)
    sub.subscribed.wait(10)
    spool_dir = Path(tempfile.mkdtemp(prefix="edgemeta-bench-spool-"))
    # A long timer interval: this script produces the telemetry itself, at a fixed rate; the
    # reporter tells for each message (these and its own) whether it went live or was queued.
    routes = RouteLog()
    r = DeviceReporter(broker.url, "bench-01", fleet="bench", interval_s=3600,
                       status=lambda: DeviceStatus(model_version="1.0.0", labels=["a", "b"]),
                       keepalive_s=2, spool=spool_dir / "spool", spool_max_records=args.bound,
                       wait_for_monitor=True, on_telemetry=routes)
    r.start()
    n_restart: int | None = None  # first n composed after the new broker was started
    t_stop = time.monotonic() + args.before
    t_restart = t_stop + args.outage
    stopped = restarted = False
    next_t = time.monotonic()
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        if not stopped and now >= t_stop:
            broker.stop()
            sub.stop()
            stopped = True
        if stopped and not restarted and now >= t_restart:
            sub = Subscriber(port, seen, lock)  # keeps trying until the broker is back
            broker = start_broker("mosquitto", port=port)
            restarted = True
        msg = r.report()
        if restarted and n_restart is None:
            n_restart = msg.n
        # Done once the replay is over and a few messages went out live after it.
        if n_restart is not None and r.connected and r.queued == 0 and msg.n > n_restart + 5:
            break
        if now - t0 > args.before + args.outage + 60:
            print("replay did not finish within 60 s", file=sys.stderr)
            break
        next_t += args.period
        time.sleep(max(0.0, next_t - time.monotonic()))
    final = r.publish_now()  # its `dropped` is the device's final count
    facts = routes.snapshot()  # before stop(), which may requeue what is still unacknowledged
    time.sleep(0.5)
    r.stop()
    sub.stop()
    broker.stop()
    sent = final.n + 1
    with lock:
        delivered = len(seen)
        got_ns = {n for b, n in seen if b == r.boot}
    count = {k: sum(1 for _, route in facts if route == k)
             for k in ("live", "offline", "behind", "requeued")}
    expected_lost = set(expected_drops(facts, args.bound))
    expected = len(expected_lost)
    lost = set(range(sent)) - got_ns
    print(f"period={args.period}s outage={args.outage}s bound={args.bound} records; "
          f"routes: {' '.join(f'{k}={v}' for k, v in count.items())}; "
          f"replay_took<={time.monotonic() - t_restart:.1f}s; "
          f"lost n's {'==' if lost == expected_lost else '!='} the oldest queued per episode")
    print(f"sent={sent} delivered={delivered} dropped={final.dropped} expected_dropped={expected}")
    composed = count["live"] + count["offline"] + count["behind"]  # one first route each
    ok = (delivered + final.dropped == sent and final.dropped == expected
          and lost == expected_lost and composed == sent)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
