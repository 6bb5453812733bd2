"""Figure: how many simulated devices one FleetMonitor follows without losing a message.

    python benchmarks/fleet_scale.py --devices 1000 --rate 1 --seconds 60

The script raises its file-descriptor limit, starts its own loopback mosquitto
(``edgemeta.fleet.start_broker("mosquitto")``, which inherits the limit), then a
:class:`~edgemeta.fleet.FleetMonitor` in a separate process (so its CPU is measured alone, with
psutil) and finally :class:`~edgemeta.fleet.simulate.FleetSimulator` in this process: N devices,
each with its own MQTT connection, Last Will, birth and telemetry at ``--rate`` Hz (QoS 1, as a
real reporter). After ``--seconds`` of telemetry the simulator stops publishing, waits (bounded)
for the broker's PUBACKs and for the monitor to drain, and the script compares:

- sent S: telemetry messages the simulator published;
- received R: distinct telemetry messages the monitor decoded, keyed by (fleet, device, boot, n)
  (the protocol's unique message id), so a duplicate delivery cannot hide a loss;
- lost L = S - R;
- monitor_cpu P: the monitor process's CPU time (user + system, all threads) over the telemetry
  window divided by the window's wall time, in percent of one core.

The count is taken in the monitor process by wrapping the ``decode`` function the monitor calls
(one set insertion per message); when the monitor has ``stats()`` its figures are printed too.

Ends with exactly: ``devices=N sent=S received=R lost=L monitor_cpu=P%``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import psutil

from edgemeta.fleet import free_port, start_broker
from edgemeta.fleet.broker import MosquittoBroker
from edgemeta.fleet.simulate import FleetSimulator, raise_fd_limit

FLEET = "scale"
_DRAIN_MAX_S = 60.0  # longest wait for the monitor to catch up after the window
_DRAIN_IDLE_S = 5.0  # ... and give up earlier when its count has not moved for this long


def _monitor_main(url: str, pipe: Connection, mqtt5: bool) -> None:
    """Child process: a FleetMonitor plus a distinct-telemetry counter, driven over ``pipe``."""
    import edgemeta.fleet.monitor as monitor_mod
    from edgemeta.fleet import FleetMonitor

    seen: set[tuple[str, str, int, int]] = set()
    counts = {"telemetry": 0, "birth": 0, "death": 0}
    decode = monitor_mod.decode

    def counting_decode(kind: str, payload: bytes) -> Any:
        msg = decode(kind, payload)
        if kind in counts:
            counts[kind] += 1
        if kind == "telemetry":
            seen.add((msg.fleet, msg.device_id, msg.boot, msg.n))
        return msg

    # The monitor module calls decode() by this name; patching it here counts exactly what the
    # monitor decoded, in its own process, without a second JSON parse.
    monitor_mod.decode = counting_decode
    # mqtt5 only when asked, so the default is the monitor's own default (MQTT 3.1.1).
    extra: dict[str, Any] = {"mqtt5": True} if mqtt5 else {}
    monitor = FleetMonitor(url, fleet_pattern=FLEET, offline_after_s=3600.0, **extra)
    monitor.start()
    pipe.send("ready")
    try:
        while True:
            if not pipe.poll(1.0):
                continue
            cmd = pipe.recv()
            if cmd == "stop":
                break
            report: dict[str, Any] = {"unique": len(seen), **counts,
                                      "errors": monitor.error_count,
                                      "devices": len(monitor.snapshot())}
            stats = getattr(monitor, "stats", None)
            if callable(stats):
                report["stats"] = stats()
            pipe.send(report)
    finally:
        monitor.stop()


class MonitorProcess:
    """The monitor child process and its CPU clock."""

    def __init__(self, url: str, mqtt5: bool = False) -> None:
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited paho state
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_monitor_main, args=(url, child, mqtt5), daemon=True)
        self.proc.start()
        if not self._pipe.poll(30.0) or self._pipe.recv() != "ready":
            self.proc.kill()
            raise SystemExit("monitor process did not start within 30 s")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def report(self) -> dict[str, Any]:
        self._pipe.send("count")
        if not self._pipe.poll(30.0):
            raise SystemExit("monitor process did not answer within 30 s")
        return self._pipe.recv()

    def stop(self) -> None:
        try:
            self._pipe.send("stop")
        except OSError:
            pass
        self.proc.join(10.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)


def _phase_of(log_line: str, phases: list[tuple[str, float]]) -> str:
    """Which phase a mosquitto log line (``<unix seconds>: text``) falls in."""
    try:
        ts = float(log_line.split(":", 1)[0])
    except ValueError:
        return "?"
    name = "before connect"
    for phase, start in phases:
        if ts >= int(start):  # mosquitto logs whole seconds
            name = phase
    return name


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _mosquitto_process() -> psutil.Process:
    # start_broker runs mosquitto as our child; find it by parentage, not by a global name.
    for child in psutil.Process().children():
        if child.name().startswith("mosquitto"):
            return child
    raise SystemExit("mosquitto child process not found")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1.0, help="telemetry messages/s per device")
    ap.add_argument("--seconds", type=float, default=60.0, help="telemetry window")
    ap.add_argument("--mqtt5", action="store_true",
                    help="monitor over MQTT 5 (mosquitto then keeps up to 65,535 messages in "
                    "flight to it instead of dropping beyond 20 + 1,000 queued)")
    ap.add_argument("--max-queued", type=int, default=None,
                    help="mosquitto's max_queued_messages (default: mosquitto's own, 1,000; "
                    "0 = no limit)")
    args = ap.parse_args(argv)

    # Simulator sockets here + the same number inside mosquitto (inherits this limit).
    fd_limit = raise_fd_limit(args.devices + 256)
    print(f"date={time.strftime('%Y-%m-%dT%H:%M:%S%z')} cpus={os.cpu_count()} "
          f"loadavg_before={'/'.join(f'{x:.2f}' for x in os.getloadavg())} fd_limit={fd_limit} "
          f"monitor_protocol={'mqtt5' if args.mqtt5 else 'default'} "
          f"max_queued_messages={'default' if args.max_queued is None else args.max_queued}")
    broker = (start_broker("mosquitto") if args.max_queued is None else
              MosquittoBroker("127.0.0.1", free_port(), max_queued_messages=args.max_queued))
    with broker:
        mosq = _mosquitto_process()
        monitor = MonitorProcess(broker.url, mqtt5=args.mqtt5)
        me = psutil.Process()
        try:
            sim = FleetSimulator(broker.url, devices=args.devices, rate_hz=args.rate,
                                 fleet=FLEET)
            phases = [("connect", time.time())]
            sim.start()
            st = sim.stats
            print(f"connect: {st.connected}/{args.devices} devices in {st.connect_time_s:.2f} s, "
                  f"failures={st.connect_failures} {st.connect_errors[:3]}")
            cpu0 = (monitor.cpu_s(), _cpu_s(mosq), _cpu_s(me))
            t0 = time.monotonic()
            phases.append(("window", time.time()))
            sim.run(args.seconds)
            phases.append(("drain", time.time()))
            wall = time.monotonic() - t0
            cpu1 = (monitor.cpu_s(), _cpu_s(mosq), _cpu_s(me))
            monitor_pct, broker_pct, sim_pct = ((b - a) / wall * 100 for a, b in zip(cpu0, cpu1))
            acked_all = sim.drain(30.0)
            # Wait for the monitor: until it has everything, or its count stops moving.
            deadline = time.monotonic() + _DRAIN_MAX_S
            last, last_change = -1, time.monotonic()
            while time.monotonic() < deadline:
                rep = monitor.report()
                if rep["unique"] >= st.sent:
                    break
                if rep["unique"] != last:
                    last, last_change = rep["unique"], time.monotonic()
                elif time.monotonic() - last_change > _DRAIN_IDLE_S:
                    break
                time.sleep(0.2)
            drain_s = time.monotonic() - t0 - wall
            rep = monitor.report()
            phases.append(("stop", time.time()))
            sim.stop()
            # Deaths: every graceful one should reach the monitor too (bounded wait).
            deadline = time.monotonic() + 10.0
            after = monitor.report()
            while after["death"] < st.deaths_sent and time.monotonic() < deadline:
                time.sleep(0.2)
                after = monitor.report()
        finally:
            monitor.stop()
        # mosquitto drops QoS 1 messages for a subscriber whose queue is full
        # (max_queued_messages, 1000 by default) and says so once per episode in its log.
        drop_notes = [line for line in broker.log_tail(100000).splitlines()
                      if "dropped" in line.lower()]
    received = rep["unique"]
    print(f"simulator: {st.summary()} all_acked={acked_all}")
    print(f"monitor: decoded telemetry={rep['telemetry']} unique={received} births={rep['birth']} "
          f"devices={rep['devices']} errors={rep['errors']} drain_s={drain_s:.1f} "
          f"deaths={after['death']}/{st.deaths_sent}")
    print(f"mosquitto log: {len(drop_notes)} 'messages dropped' notices"
          + "".join(f"; during {_phase_of(line, phases)}: {line}" for line in drop_notes[:5]))
    if "stats" in rep:
        print(f"monitor.stats(): {rep['stats']}")
    print(f"cpu over the {wall:.1f} s window (% of one core): monitor={monitor_pct:.1f} "
          f"mosquitto={broker_pct:.1f} simulator={sim_pct:.1f}; "
          f"loadavg_after={'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"devices={args.devices} sent={st.sent} received={received} "
          f"lost={st.sent - received} monitor_cpu={monitor_pct:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
