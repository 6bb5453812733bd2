"""Simulate a fleet at scale: many devices, one process, one event loop.

Each simulated device has its own MQTT connection (its own client id and Last Will), publishes
a retained birth on connect and telemetry at a fixed rate with Sparkplug-style sequence numbers,
exactly as :class:`~edgemeta.fleet.reporter.DeviceReporter` does, so a
:class:`~edgemeta.fleet.monitor.FleetMonitor` cannot tell them from real boards. A thread per
device (what the reporter does) does not scale to thousands of devices; here every paho client
runs on paho's external-loop API (``loop_read``/``loop_write``/``loop_misc`` plus the
``on_socket_*`` callbacks), driven by one ``selectors`` loop in the calling thread.

Message generation lives in :mod:`edgemeta.fleet._simdevice` (pure, no network) so it can be
unit-tested; this module owns connections, scheduling and counters.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._guard import guarded
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet._selectloop import SelectLoop
from edgemeta.fleet._simdevice import SimDevice
from edgemeta.fleet.schema import validate_id

__all__ = ["FleetSimulator", "SimDevice", "SimulationStats", "raise_fd_limit"]

log = logging.getLogger(__name__)

# File descriptors besides the device sockets: stdio, the epoll fd, logs, imported modules.
_FD_MARGIN = 64
# Connections that got a TCP connect but no CONNACK yet. mosquitto's listen backlog is small;
# a blocking connect() whose SYN is dropped stalls the whole loop for a retransmit (1 s), so the
# simulator never lets more than this many handshakes pile up.
_MAX_CONNECTING = 100
_CONNECTS_PER_TICK = 50
_MAX_ERRORS_KEPT = 10
_MISC_PERIOD_S = 1.0  # how often each client's keepalive is checked (keepalive_s >= 1)
_TICK_S = 0.02  # longest select() wait: bounds how late a due message or a connect can start


def raise_fd_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``needed`` (never above the hard limit).

    Child processes started afterwards (e.g. a mosquitto from
    :func:`~edgemeta.fleet.broker.start_broker`) inherit the raised limit.

    Args:
        needed: File descriptors the caller expects to hold.

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class SimulationStats:
    """Counters of one simulation; all message counts are MQTT publishes of this process.

    Attributes:
        devices: Devices requested.
        connected: Devices whose CONNACK arrived (and that were not refused).
        connect_failures: Devices that never connected (refused, unreachable or timed out).
        connect_errors: The first few connect error messages, for the report.
        connect_time_s: Seconds from the first connect to the last CONNACK (or the deadline).
        births: Births published (one per connected device).
        sent: Telemetry messages published.
        acked: Telemetry messages the broker acknowledged (PUBACK).
        behind: Telemetry messages that were due in the window but not sent because the loop
            fell behind schedule (0 when the simulator kept up).
        skipped: Telemetry messages not sent because the device had lost its connection.
        max_lag_s: Largest delay between a message's due time and its publish.
        disconnects: Connections lost during the run (devices are not reconnected).
        deaths_sent: Graceful deaths published on stop.
        deaths_acked: Graceful deaths the broker acknowledged.
        window_s: Seconds of the telemetry window actually run.
    """

    devices: int
    connected: int = 0
    connect_failures: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_time_s: float = 0.0
    births: int = 0
    sent: int = 0
    acked: int = 0
    behind: int = 0
    skipped: int = 0
    max_lag_s: float = 0.0
    disconnects: int = 0
    deaths_sent: int = 0
    deaths_acked: int = 0
    window_s: float = 0.0

    @property
    def backlog(self) -> int:
        """Telemetry published but not acknowledged by the broker (queued or in flight)."""
        return self.sent - self.acked

    def summary(self) -> str:
        """One line with every counter, for logs and the CLI."""
        return (
            f"devices={self.devices} connected={self.connected} "
            f"connect_failures={self.connect_failures} connect_s={self.connect_time_s:.2f} "
            f"window_s={self.window_s:.1f} sent={self.sent} acked={self.acked} "
            f"backlog={self.backlog} behind={self.behind} skipped={self.skipped} "
            f"max_lag_ms={self.max_lag_s * 1000:.0f} disconnects={self.disconnects} "
            f"deaths={self.deaths_acked}/{self.deaths_sent}"
        )


@dataclass(eq=False)
class _Conn:
    """One device's client and connection bookkeeping (the loop's selector key data)."""

    dev: SimDevice
    client: mqtt.Client
    topic_telemetry: str
    topic_birth: str
    topic_death: str
    state: str = "new"  # new -> connecting -> up -> (lost | closed) | failed
    birth_mid: int | None = None
    death_mid: int | None = None
    death_acked: bool = False


class FleetSimulator(StartStop):
    """Many simulated devices from one process, each with its own MQTT connection.

    Use ``start()`` (connect all, staggered), ``run(seconds)`` (publish telemetry) and ``stop()``
    (graceful deaths, disconnect), or :meth:`simulate` for all three. Everything runs in the
    calling thread; a monitor in another thread or process can watch meanwhile.

    Args:
        broker_url: ``mqtt://[user@]host[:port]`` (TLS is not supported here).
        devices: Number of devices (>= 1); ids are ``<prefix>-00000``, ``<prefix>-00001``, ...
        rate_hz: Telemetry messages per second per device (> 0). Devices are spread evenly
            over one period, so the broker sees a steady ``devices * rate_hz`` messages/s.
        fleet: Fleet id of every device.
        prefix: Device id prefix.
        keepalive_s: MQTT keepalive of every connection.
        connect_timeout_s: Longest time :meth:`start` spends connecting; None scales with the
            number of devices (10 s + 10 ms per device).
        seed: Seed of the simulated metrics (latencies, accuracy), for reproducible payloads.

    Raises:
        FleetError: On a bad or TLS URL, count or rate.
        MessageError: On an invalid fleet id or prefix.
    """

    def __init__(
        self,
        broker_url: str,
        devices: int,
        rate_hz: float = 1.0,
        fleet: str = "sim",
        *,
        prefix: str = "sim",
        keepalive_s: int = 30,
        connect_timeout_s: float | None = None,
        seed: int = 0,
    ) -> None:
        addr = _mqtt.parse_broker_url(broker_url)
        if addr.tls:
            # paho's external loop cannot see bytes buffered inside an SSL object, so a TLS
            # client here could stall with data pending; refuse rather than hang.
            raise FleetError(f"fleet simulation supports plain mqtt:// brokers only, got "
                             f"{_mqtt.redact_url(broker_url)}: expected mqtt://host[:port]")
        self._host, self._port = addr.host, addr.port
        self._username, self._password = addr.username, addr.password
        self._url = _mqtt.redact_url(broker_url)
        if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
            raise FleetError(f"devices must be an integer >= 1, got {devices!r}")
        if not isinstance(rate_hz, (int, float)) or not math.isfinite(rate_hz) or rate_hz <= 0:
            raise FleetError(f"rate_hz must be a positive number of messages per second, "
                             f"got {rate_hz!r}")
        if not isinstance(keepalive_s, int) or isinstance(keepalive_s, bool) or keepalive_s < 1:
            raise FleetError(f"keepalive_s must be an integer >= 1, got {keepalive_s!r}")
        validate_id(fleet, "fleet")
        validate_id(f"{prefix}-{devices - 1:05d}", "device id")  # the longest id must fit
        self._rate = float(rate_hz)
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = (10.0 + 0.01 * devices if connect_timeout_s is None
                                   else float(connect_timeout_s))
        boot_ms = int(time.time() * 1000)
        self._guarded_connect = guarded(self._on_connect, "simulator on_connect")
        self._guarded_disconnect = guarded(self._on_disconnect, "simulator on_disconnect")
        self._guarded_publish = guarded(self._on_publish, "simulator on_publish")
        self._conns: list[_Conn] = []
        self._loop = SelectLoop(misc_period_s=_MISC_PERIOD_S)
        for i in range(devices):
            dev = SimDevice(f"{prefix}-{i:05d}", fleet, boot_ms=boot_ms, seed=seed + i,
                            interval_s=1.0 / self._rate)
            client = _mqtt.new_client(f"edgemeta-{fleet}-{dev.device_id}")
            if self._username is not None:
                client.username_pw_set(self._username, self._password)
            conn = _Conn(dev, client, dev.topic("telemetry"), dev.topic("birth"),
                         dev.topic("death"))
            client.user_data_set(conn)
            # Guarded: paho re-raises callback exceptions, which would end the whole run.
            client.on_connect = self._guarded_connect
            client.on_disconnect = self._guarded_disconnect
            client.on_publish = self._guarded_publish
            self._loop.attach(client)
            self._conns.append(conn)
        self.stats = SimulationStats(devices=devices)
        self._state = "new"  # new -> started -> stopped

    # --- public API -----------------------------------------------------------------------------

    @property
    def devices(self) -> list[SimDevice]:
        """The simulated devices, in id order (their counters are live)."""
        return [c.dev for c in self._conns]

    def sent_by_device(self) -> dict[str, int]:
        """Telemetry messages published per device id."""
        return {c.dev.device_id: c.dev.sent for c in self._conns}

    def simulate(self, seconds: float) -> SimulationStats:
        """``start()``, ``run(seconds)`` and ``stop()``; stops also on an exception."""
        with self:
            self.run(seconds)
        return self.stats

    def start(self) -> None:
        """Connect every device (staggered) and publish its birth.

        Returns when every device has connected or failed, or after the connect timeout;
        failures are counted in :attr:`stats`, not raised, so a partial fleet still runs.

        Raises:
            FleetError: If the simulator was already started, if the file-descriptor limit is
                too low for the number of devices, or if no device at all could connect.
        """
        if self._state != "new":
            raise FleetError(f"simulator is {self._state}: expected a new simulator")
        needed = len(self._conns) + _FD_MARGIN
        limit = raise_fd_limit(needed)
        if limit < needed:
            raise FleetError(
                f"{len(self._conns)} devices need about {needed} file descriptors but the hard "
                f"limit is {limit}: raise it (ulimit -Hn as root) or simulate fewer devices"
            )
        self._state = "started"
        t0 = time.monotonic()
        deadline = t0 + self._connect_timeout_s
        st = self.stats
        started = 0
        total = len(self._conns)
        while st.connected + st.connect_failures < total and time.monotonic() < deadline:
            # Start more handshakes only while few are outstanding (see _MAX_CONNECTING).
            connecting = started - st.connected - st.connect_failures
            batch = min(_CONNECTS_PER_TICK, _MAX_CONNECTING - connecting, total - started)
            for conn in self._conns[started:started + max(0, batch)]:
                self._connect(conn)
            started += max(0, batch)
            self._loop.poll(_TICK_S)
        for conn in self._conns:
            if conn.state in ("new", "connecting"):
                self._fail(conn, f"no CONNACK within {self._connect_timeout_s:g} s")
                self._loop.drop(conn.client)
        self.stats.connect_time_s = time.monotonic() - t0
        if self.stats.connected == 0:
            self._state = "stopped"
            self._loop.close()
            raise FleetError(
                f"none of {len(self._conns)} simulated devices could connect to {self._url}: "
                f"{'; '.join(self.stats.connect_errors) or 'no reason recorded'}"
            )

    def run(self, seconds: float) -> SimulationStats:
        """Publish telemetry at ``rate_hz`` per device for ``seconds`` (inf: until Ctrl-C).

        Device ``i`` of ``N`` sends at ``t0 + (i / N + k) / rate_hz``. When the loop falls
        behind, it sends the overdue messages as fast as it can (``max_lag_s`` grows); what is
        still unsent at the end of the window is counted in ``behind``.

        Raises:
            FleetError: If not started.
        """
        if self._state != "started":
            raise FleetError(f"simulator is {self._state}: call start() before run()")
        if not seconds >= 0:
            raise FleetError(f"seconds must be >= 0, got {seconds!r}")
        n = len(self._conns)
        step = 1.0 / (self._rate * n)  # seconds between two consecutive publishes of the fleet
        t0 = time.monotonic()
        end = t0 + seconds
        tick = 0
        try:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                # Publish everything due, in small slices so reads (PUBACKs) are not starved.
                budget = 200
                while budget and t0 + tick * step <= now:
                    self._publish_telemetry(self._conns[tick % n], now - (t0 + tick * step))
                    tick += 1
                    budget -= 1
                self._loop.flush()
                wait = 0.0 if budget == 0 else min(_TICK_S, max(0.0, t0 + tick * step - now))
                self._loop.poll(wait)
                self._loop.misc(now)
        except KeyboardInterrupt:
            end = time.monotonic()  # Ctrl-C ends the window; stop() still runs the deaths
        finally:
            stop_at = min(end, time.monotonic())
            self.stats.window_s = stop_at - t0
            due = max(0, math.ceil((stop_at - t0) / step - 1e-9))
            self.stats.behind += max(0, due - tick)
        return self.stats

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Keep the loop running until every telemetry message is acknowledged or time is up.

        Returns:
            True if nothing is left unacknowledged.
        """
        deadline = time.monotonic() + timeout_s
        while self.stats.backlog > 0 and time.monotonic() < deadline:
            self._loop.flush()
            self._loop.poll(_TICK_S)
            self._loop.misc(time.monotonic())
        return self.stats.backlog == 0

    def stop(self, timeout_s: float = 10.0) -> None:
        """Publish a graceful death from every connected device, then disconnect. Idempotent.

        Args:
            timeout_s: Longest wait for the deaths' PUBACKs and for the sockets to close.
        """
        if self._state != "started":
            self._state = "stopped"
            return
        self._state = "stopped"
        up = [c for c in self._conns if c.state == "up"]
        for conn in up:
            death = conn.dev.graceful_death()
            info = conn.client.publish(conn.topic_death, death.to_payload(), qos=1, retain=True)
            conn.death_mid = info.mid
            self.stats.deaths_sent += 1
        deadline = time.monotonic() + timeout_s
        while (any(not c.death_acked for c in up if c.state == "up")
               and time.monotonic() < deadline):
            self._loop.flush()
            self._loop.poll(_TICK_S)
        # A clean DISCONNECT makes the broker drop the Last Will, as for a real reporter.
        for conn in self._conns:
            if conn.state == "up":
                conn.state = "closed"
                conn.client.disconnect()
        while self._loop.open_sockets and time.monotonic() < deadline:
            self._loop.flush()
            self._loop.poll(_TICK_S)
        self._loop.close()  # bounded stop: drops whatever did not close in time

    def abort(self) -> int:
        """Drop every connection without DISCONNECT, as a power cut would. Idempotent.

        The broker then publishes each device's Last Will (``Death(reason="lost")``, retained,
        with the ``bd_seq`` of its birth). Nothing is sent by the devices themselves.

        Returns:
            How many connections were dropped.
        """
        if self._state != "started":
            self._state = "stopped"
            return 0
        self._state = "stopped"
        dropped = 0
        for conn in self._conns:
            if conn.state == "up":
                conn.state = "aborted"
                dropped += self._loop.drop(conn.client)
        self._loop.close()
        return dropped

    # --- the loop -------------------------------------------------------------------------------

    def _connect(self, conn: _Conn) -> None:
        conn.client.will_set(conn.topic_death, conn.dev.will().to_payload(), qos=1, retain=True)
        conn.client.connect_timeout = 5.0
        conn.state = "connecting"
        try:
            # Blocking TCP connect (fast on a LAN/loopback); CONNECT is queued and written by
            # the loop through on_socket_register_write.
            conn.client.connect(self._host, self._port, keepalive=self._keepalive_s)
        except OSError as exc:
            self._fail(conn, f"cannot reach {self._url}: {exc}")

    def _fail(self, conn: _Conn, why: str) -> None:
        conn.state = "failed"
        self.stats.connect_failures += 1
        if len(self.stats.connect_errors) < _MAX_ERRORS_KEPT:
            self.stats.connect_errors.append(f"{conn.dev.device_id}: {why}")

    def _publish_telemetry(self, conn: _Conn, lag_s: float) -> None:
        if conn.state != "up":
            if conn.state == "lost":
                self.stats.skipped += 1
            return
        msg = conn.dev.telemetry()
        conn.client.publish(conn.topic_telemetry, msg.to_payload(), qos=1)
        self.stats.sent += 1
        self.stats.max_lag_s = max(self.stats.max_lag_s, lag_s)

    # --- paho callbacks (all run inside this thread's loop) -------------------------------------

    def _on_connect(self, client: mqtt.Client, conn: _Conn, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self._fail(conn, f"broker refused the connection: {reason_code}")
            return
        birth = conn.dev.birth()
        conn.birth_mid = client.publish(conn.topic_birth, birth.to_payload(), qos=1,
                                        retain=True).mid
        conn.state = "up"
        self.stats.connected += 1
        self.stats.births += 1

    def _on_disconnect(self, client: mqtt.Client, conn: _Conn, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if conn.state == "connecting":
            self._fail(conn, f"connection closed before CONNACK: {reason_code}")
        elif conn.state == "up":
            conn.state = "lost"
            self.stats.disconnects += 1
            log.warning("simulated device %s lost its connection: %s", conn.dev.device_id,
                        reason_code)

    def _on_publish(self, client: mqtt.Client, conn: _Conn, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if mid == conn.birth_mid:
            conn.birth_mid = None
        elif mid == conn.death_mid:
            conn.death_acked = True
            self.stats.deaths_acked += 1
        else:
            conn.dev.acked += 1
            self.stats.acked += 1
