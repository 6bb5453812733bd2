"""Board side: publish birth, telemetry, replies and death of one device over MQTT.

Nothing is lost while the broker is away: telemetry (and command replies) go to a bounded queue,
on disk in the board home (:class:`~edgemeta.fleet.spool.Spool`) or in memory, and are replayed in
order after the reconnect's birth, each acknowledged only after the broker's PUBACK. The
Sparkplug-style sequence numbers (``bd_seq`` per connection, ``seq`` per message) and the queue
are described in docs/telemetry.md ("Nothing lost").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import psutil

from edgemeta import __version__
from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet._reporter_commands import CommandEvents, CommandHandler, CommandWorker
from edgemeta.fleet._reporter_link import LinkEvents
from edgemeta.fleet._reporter_outbox import Outbox
from edgemeta.fleet._reporter_replay import BEHIND_KEY, REQUEUED, ROUTES, Sender
from edgemeta.fleet._reporter_session import MAX_LABELS_SENT, SessionClock, labels_to_send
from edgemeta.fleet._reporter_status import DeviceStatus, StatusSource
from edgemeta.fleet.schema import (
    Birth, Death, Reply, Telemetry, topic, validate_id,
)
from edgemeta.fleet.spool import DEFAULT_MAX_BYTES, MemoryQueue, Spool

__all__ = ["DeviceStatus", "DeviceReporter", "MAX_LABELS_SENT"]

log = logging.getLogger(__name__)

# Called with each composed telemetry message and its route (see _reporter_replay).
TelemetryHook = Callable[[Telemetry, str], None]


class DeviceReporter(LinkEvents, CommandEvents, StartStop):
    """Publishes one device's birth, telemetry every ``interval_s``, replies and death.

    The Last Will (``Death(reason="lost")``, retained, QoS 1, with this connection's ``bd_seq``)
    is registered before every connect. Every (re)connect publishes a retained birth (``seq`` 0),
    then replays what was queued while disconnected, then goes live. The reporter also answers
    commands on ``.../<device>/cmd`` and follows the monitors' retained host state.

    Args:
        broker_url: Broker URL (``mqtt://host[:port]``, or ``mqtts://...``, see docs).
        device_id: Device id, 1-64 characters ``[A-Za-z0-9_.-]``.
        fleet: Fleet id, same alphabet.
        interval_s: Seconds between telemetry messages (> 0).
        status: Callable returning the agent's current :class:`DeviceStatus`; None reports an
            empty status (no model).
        board: Board profile name for the birth message.
        backend: Interpreter backend name for the birth message.
        keepalive_s: MQTT keepalive; the broker declares the device lost after ~1.5x this silence.
        connect_timeout_s: How long :meth:`start` waits for the broker.
        spool: Directory of the on-disk queue (e.g. ``HOME/spool``); None keeps the queue in
            memory (same bound and drop counting, lost when the process ends).
        spool_max_bytes: Bound on the queued records in bytes; the oldest are dropped first.
        spool_max_records: Optional bound on the number of queued records.
        spool_fsync: fsync every spooled record (off only for tests/benchmarks).
        session_path: File keeping the last session id (e.g. ``HOME/state/reporter.json``), so
            a restart with the clock set back (a board without RTC) still gets a larger session
            and is not ignored by monitors; None: sessions follow the clock across restarts.
        command_handler: Carries out commands other than ``rebirth`` and ``report``: called with
            the :class:`Command` on a worker thread, returns ``(ok, result, error)``. None answers
            every such command with ``ok: false``.
        wait_for_monitor: Sparkplug's rule for edge nodes: after each connect, publish the
            birth (and replay) only once a monitor's retained host state says ``online``, so a
            restarted broker gets the replay only when someone is listening. Default False:
            publish at once.
        on_telemetry: Called with every telemetry message composed and its route: ``"live"``
            (handed to paho), ``"offline"`` (queued while not online), ``"behind"`` (queued
            while online behind older records), and once more with ``"requeued"`` when a live
            message is put back in the queue because the link dropped before its PUBACK. Called
            without the reporter's lock, on the composing thread or paho's; must be quick and
            must not raise (exceptions are logged). For exact accounting in tests/benchmarks.

    Raises:
        FleetError: On a bad broker URL, bad interval/keepalive/bounds, or a spool directory
            that cannot be used (e.g. held by another process).
        MessageError: On an invalid device or fleet id.
    """

    def __init__(
        self,
        broker_url: str,
        device_id: str,
        fleet: str = "default",
        interval_s: float = 5.0,
        status: Callable[[], DeviceStatus] | None = None,
        board: str | None = None,
        backend: str | None = None,
        *,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        spool: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_max_records: int | None = None,
        spool_fsync: bool = True,
        command_handler: CommandHandler | None = None,
        wait_for_monitor: bool = False,
        on_telemetry: TelemetryHook | None = None,
        session_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._url = broker_url
        self._addr = _mqtt.parse_broker_url(broker_url)  # fail at construction, not in a thread
        self._shown_url = _mqtt.redact_url(broker_url)
        self._device_id = validate_id(device_id, "device id")
        self._fleet = validate_id(fleet, "fleet")
        if not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise FleetError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        if not isinstance(keepalive_s, int) or isinstance(keepalive_s, bool) or keepalive_s < 1:
            raise FleetError(f"keepalive_s must be an integer >= 1, got {keepalive_s!r}")
        self._interval_s = float(interval_s)
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = float(connect_timeout_s)
        self._status = StatusSource(status, self._device_id)
        self._board = board
        self._backend = backend
        self._handler = command_handler
        self._wait_for_monitor = bool(wait_for_monitor)
        self._on_telemetry = on_telemetry
        # Milliseconds since the epoch, but always larger than the last one (persisted in
        # session_path): a restarted process gets a larger session even if the clock went back.
        # Each reconnect takes a larger one too (see _on_disconnect).
        self._clock = SessionClock(session_path, self._device_id)
        self._session = self._clock.next()
        self._boot = self._session  # constant for the process: (boot, n) names a telemetry
        self._n = 0
        self._bd_seq = 0  # Sparkplug bdSeq: +1 per connection, shared by birth and Last Will
        self._seq = 0  # Sparkplug seq: 0 in the birth, then +1 per message, wrapping at 256
        # _lock orders everything on the wire (seq, online flag, queue, client.publish) and is
        # taken by paho's thread in on_connect/on_disconnect/on_message, never in on_publish
        # (which paho calls holding its own message lock). _session_lock guards session and
        # bd_seq so the `session` property can be read while _lock is held.
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._online = False  # a birth was published on the current connection
        self._births = 0  # connections that went online (the first sends no extra telemetry)
        self._hosts: dict[str, bool] = {}
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._state = "new"  # new -> started -> stopped; one-shot on purpose
        self._t0 = time.monotonic()
        self._process = psutil.Process()
        self._waiter = _mqtt.ConnectWaiter()
        self._birth_info: mqtt.MQTTMessageInfo | None = None

        queue: Spool | MemoryQueue = (
            Spool(spool, spool_max_bytes, spool_max_records, fsync=spool_fsync)
            if spool is not None else MemoryQueue(spool_max_bytes, spool_max_records))
        self._outbox = Outbox(queue, self._boot)
        # Live or queued, live messages awaiting PUBACK, replay batches, the drop count.
        self._sender = Sender(self._outbox, self._lock, self._publish_record,
                              lambda: self._online, self._device_id)
        self._commands = CommandWorker(self._dispatch, self._send_reply,
                                       name=f"edgemeta-cmd-{self._device_id}")
        self._client = _mqtt.new_client(f"edgemeta-{self._fleet}-{self._device_id}")
        # No limit inside paho: while disconnected nothing is handed to paho (the queue holds it).
        self._client.max_queued_messages_set(0)
        self._set_will()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # --- public API -----------------------------------------------------------------------------

    @property
    def session(self) -> int:
        """Birth/death session id of the current connection (grows on every reconnect)."""
        with self._session_lock:
            return self._session

    @property
    def bd_seq(self) -> int:
        """``bd_seq`` of the current (or next) connection."""
        with self._session_lock:
            return self._bd_seq

    @property
    def boot(self) -> int:
        """Milliseconds since the epoch when this reporter was made; ``(boot, n)`` is unique."""
        return self._boot

    @property
    def device_id(self) -> str:
        """Device id."""
        return self._device_id

    @property
    def fleet(self) -> str:
        """Fleet id."""
        return self._fleet

    @property
    def connected(self) -> bool:
        """True while connected to the broker with a birth published."""
        return self._online and self._client.is_connected()

    @property
    def dropped(self) -> int:
        """Telemetry messages of this boot dropped from the full queue (exact)."""
        return self._sender.dropped

    @property
    def queued(self) -> int:
        """Records waiting in the queue or in flight from it."""
        with self._lock:
            return len(self._outbox.queue)

    @property
    def monitor_online(self) -> bool:
        """True if some monitor's retained host state says it is listening."""
        with self._lock:
            return any(self._hosts.values())

    def start(self, wait: bool = True) -> None:
        """Connect, publish the birth and start the telemetry, replay and command threads.

        Args:
            wait: True: return once the broker acknowledged the birth, raise if it cannot be
                reached. False: return at once and keep trying in the background; telemetry is
                queued until the first connection (what a board service wants).

        Raises:
            FleetError: With ``wait``, if the broker cannot be reached within
                ``connect_timeout_s``; or if the reporter was already started.
        """
        if self._state != "new":
            raise FleetError(f"reporter is {self._state}: expected a new reporter (create another)")
        # "started" before paho's thread runs: a disconnect right after the first connection
        # must be handled (online flag cleared) or the next connection would send no birth.
        with self._lock:
            self._state = "started"
        self._t0 = time.monotonic()
        try:
            if wait:
                _mqtt.connect(self._client, self._url, self._keepalive_s,
                              self._connect_timeout_s, self._waiter)
            else:
                _mqtt.configure(self._client, self._addr, self._url)
                self._client.connect_async(self._addr.host, self._addr.port, self._keepalive_s)
                self._client.loop_start()  # paho retries the first connection too
        except BaseException:
            with self._lock:
                self._state = "new"  # nothing runs: stop() or another start() may follow
                self._online = False
            raise
        info = self._birth_info
        if wait and info is not None:
            self._wait(info, self._connect_timeout_s, "birth")
        self._commands.start()
        for target, name, args in ((self._run_timer, "telemetry", ()),
                                   (self._sender.run, "replay", (self._stop_event, self._wake))):
            t = threading.Thread(target=target, args=args,
                                 name=f"edgemeta-{name}-{self._device_id}", daemon=True)
            t.start()
            self._threads.append(t)

    def publish_now(self, timeout_s: float = 5.0) -> Telemetry:
        """Publish one telemetry message now and wait for the broker's PUBACK.

        Returns:
            The message sent.

        Raises:
            FleetError: If the reporter is not started, or the message was queued instead (not
                connected, or older queued messages go first), or no PUBACK arrived in time (it
                is then queued again after a reconnect).
        """
        if self._state != "started":
            raise FleetError(f"reporter is {self._state}: call start() before publish_now()")
        msg, info = self._emit_telemetry()
        if info is None:
            raise FleetError(f"telemetry n={msg.n} of {self._device_id} queued, not sent: the "
                             "broker is unreachable or older queued messages go first")
        self._wait(info, timeout_s, f"telemetry seq {msg.seq}", strict=True)
        return msg

    def report(self) -> Telemetry:
        """Compose one telemetry message now and send it, or queue it when it cannot go yet.

        Never waits and never raises for connectivity: what the agent calls after new results.

        Raises:
            FleetError: If the reporter is not started.
            MessageError: If the status has invalid values (nothing is sent or queued).
        """
        if self._state != "started":
            raise FleetError(f"reporter is {self._state}: call start() before report()")
        return self._emit_telemetry()[0]

    def publish_birth(self, timeout_s: float = 5.0) -> Birth:
        """Publish the birth again (``seq`` restarts at 0), e.g. after a model swap.

        Raises:
            FleetError: If not started, not connected, or no PUBACK arrived in time.
        """
        if self._state != "started":
            raise FleetError(f"reporter is {self._state}: call start() before publish_birth()")
        st = self._status.read()
        with self._lock:
            if not self._online:
                raise FleetError(f"{self._device_id} is not connected to {self._shown_url}: the "
                                 "next connection publishes a birth anyway")
            msg, info = self._publish_birth_locked(st)
        self._wait(info, timeout_s, "birth", strict=True)
        return msg

    def flush(self, timeout_s: float = 5.0, *, wait_online: bool = False) -> bool:
        """Wait (bounded) until everything queued is sent and acknowledged; True if it was.

        When not connected it returns False at once (queued records wait for the next
        connection, or the next start, in the disk spool), unless ``wait_online``: then it also
        waits, within ``timeout_s``, for the connection and its birth.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            with self._lock:
                online = self._online and self._client.is_connected()
                if online and self._sender.drained_locked():
                    return True
            if not online and not wait_online:
                return False
            if time.monotonic() >= deadline:
                return False
            self._wake.set()  # nudge the replay thread
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish a graceful death, disconnect and join the threads. Safe to call twice.

        Records still queued stay in the on-disk spool for the next start (an in-memory queue
        loses them; their number is logged).

        Args:
            timeout_s: Longest wait in all, shared by the flush (at most half), the threads and
                the death's PUBACK (at least a quarter, up to 1 s, is kept for it), so a
                service manager's stop timeout can rely on it.
        """
        if self._state != "started":
            self._state = "stopped"
            self._outbox.close()
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        death_s = min(1.0, max(0.0, timeout_s) / 4)

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - time.monotonic())

        # A graceful stop first delivers what is waiting (the last telemetry, replays) while
        # the link is up, so "stopped" never hides the figures of its last moments.
        self.flush(left() / 2)
        self._stop_event.set()
        self._wake.set()
        for t in self._threads:
            t.join(left(death_s))
        self._commands.stop(left(death_s))
        timeout_s = max(left(), 0.01)  # what remains is for the graceful death
        with self._lock:
            self._state = "stopped"  # from here on, a disconnect is our own
            info = None
            if self._online and self._client.is_connected():
                death = Death(self._device_id, self._fleet, self.session, time.time(), "graceful",
                              bd_seq=self.bd_seq, seq=self._next_seq())
                info = self._client.publish(self._topic("death"), death.to_payload(), qos=1,
                                            retain=True)
        if info is not None:
            self._wait(info, timeout_s, "graceful death")
        else:
            log.warning("reporter %s stopping while disconnected: no graceful death sent; "
                        "the broker's Last Will reports it as lost", self._device_id)
        with self._lock:
            self._online = False
            self._sender.settle_batch_locked()
            # PUBACKs come in order: what is unacknowledged now was not delivered; keep it.
            requeued = self._sender.requeue_unacked_locked()
            still_queued = len(self._outbox.queue)
        self._tell_requeued(requeued)
        # A clean DISCONNECT makes the broker discard the Last Will, so "lost" is not sent too.
        self._client.disconnect()
        self._client.loop_stop()
        self._outbox.close()
        if still_queued:
            where = "kept in the spool" if self._outbox.on_disk else "lost (in-memory queue)"
            log.warning("reporter %s stopped with %d queued messages: %s", self._device_id,
                        still_queued, where)

    # --- composing and sending ------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return topic(self._fleet, self._device_id, kind)

    def _next_seq(self) -> int:
        # Called with self._lock held.
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _publish_birth_locked(self, st: DeviceStatus) -> tuple[Birth, mqtt.MQTTMessageInfo]:
        self._seq = 0  # a birth restarts the sequence
        msg = Birth(
            device_id=self._device_id, fleet=self._fleet, session=self.session,
            ts=time.time(), model_version=st.model_version, model_sha256=st.model_sha256,
            backend=self._backend, board=self._board,
            labels=labels_to_send(st.labels), agent_version=__version__,
            bd_seq=self.bd_seq, seq=0, interval_s=self._interval_s,
        )
        info = self._client.publish(self._topic("birth"), msg.to_payload(), qos=1, retain=True)
        return msg, info

    def _emit_telemetry(self) -> tuple[Telemetry, mqtt.MQTTMessageInfo | None]:
        """Compose one telemetry message; send it live or queue it. Returns it and its info."""
        st = self._status.read()
        rss = self._process.memory_info().rss
        with self._lock:
            # Validated now, with placeholder session/seq: a bad status must fail here, not
            # sit in the spool and fail at every replay.
            msg = Telemetry(
                device_id=self._device_id, fleet=self._fleet, session=0, seq=0, ts=time.time(),
                uptime_s=time.monotonic() - self._t0, model_version=st.model_version,
                model_sha256=st.model_sha256, labels=labels_to_send(st.labels),
                n_classes=len(st.labels), inference_count=st.inference_count,
                latency_p50_ms=st.latency_p50_ms, latency_p95_ms=st.latency_p95_ms,
                rss_bytes=rss, accuracy=st.accuracy, evaluated=st.evaluated, boot=self._boot,
                n=self._n, dropped=self._sender.dropped,
            )
            self._n += 1
            sent, info, route = self._sender.emit_locked("telemetry", msg.to_dict())
        if info is None:
            self._wake.set()
        out = sent if isinstance(sent, Telemetry) else msg
        self._tell(out, route)
        return out, info

    def _tell(self, msg: Telemetry, route: str) -> None:
        """Report one telemetry message's route to the ``on_telemetry`` hook (lock not held)."""
        assert route in ROUTES
        if self._on_telemetry is None:
            return
        try:
            self._on_telemetry(msg, route)
        except Exception:  # noqa: BLE001 - caller's hook must not break sending
            log.warning("on_telemetry hook of %s failed", self._device_id, exc_info=True)

    def _tell_requeued(self, requeued: list[Telemetry | Reply]) -> None:
        for m in requeued:
            if isinstance(m, Telemetry):
                self._tell(m, REQUEUED)

    def _publish_record(self, kind: str, fields: dict[str, Any], replayed: bool
                        ) -> tuple[Telemetry | Reply, mqtt.MQTTMessageInfo]:
        # Called with self._lock held (by the Sender).
        """Stamp session and the next seq on a queued/live message and hand it to paho."""
        # Queued while online by this process: fresh, not a replay (one of an earlier run is).
        replayed = replayed and not (fields.get(BEHIND_KEY) and fields.get("boot") == self._boot)
        fields = {k: v for k, v in fields.items() if k not in ("schema", BEHIND_KEY)}
        # The seq is used up only once the message is valid and encoded: a record that fails
        # here must not leave a gap the monitor would answer with a rebirth request.
        fields.update(session=self.session, seq=(self._seq + 1) % 256)
        if kind == "telemetry":
            msg: Telemetry | Reply = Telemetry(**{**fields, "replayed": replayed})
        else:
            msg = Reply(**fields)
        payload = msg.to_payload()
        self._next_seq()
        return msg, self._client.publish(self._topic(kind), payload, qos=1)

    def _wait(self, info: mqtt.MQTTMessageInfo, timeout_s: float, what: str,
              strict: bool = False) -> None:
        """Wait for a PUBACK; raise FleetError when ``strict``, else log a warning."""
        _mqtt.wait_acked(info, timeout_s, f"{what} of {self._device_id} to {self._shown_url}",
                         strict=strict)

    # --- threads --------------------------------------------------------------------------------

    def _run_timer(self) -> None:
        # The first telemetry goes out right away so a monitor shows metrics without waiting
        # a whole interval; offline, it is queued. The loop ends when stop() sets the event.
        delay = 0.0
        while not self._stop_event.wait(delay):
            delay = self._interval_s
            try:
                self._emit_telemetry()
            except MessageError:
                log.warning("telemetry of %s not sent: status has invalid values",
                            self._device_id, exc_info=True)
            except Exception:  # noqa: BLE001 - e.g. a failing SD card under the spool
                log.exception("telemetry of %s failed; trying again in %g s", self._device_id,
                              self._interval_s)
