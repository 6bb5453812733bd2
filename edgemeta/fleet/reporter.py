"""Board side: publish birth, periodic telemetry and death of one device over MQTT."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psutil

from edgemeta import __version__
from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet.schema import Birth, Death, Telemetry, topic, validate_id
from edgemeta.fleet._lifecycle import StartStop

__all__ = ["DeviceStatus", "DeviceReporter"]

log = logging.getLogger(__name__)

# Bound paho's outgoing queue: telemetry keeps being produced while the broker is away, and a board
# has little memory. Older messages are still delivered on reconnect; newer ones are dropped.
_MAX_QUEUED = 100
# Payloads are capped at 64 KiB; a board with thousands of classes must still report. The first
# MAX_LABELS_SENT labels are sent; n_classes stays exact.
MAX_LABELS_SENT = 256


@dataclass(frozen=True)
class DeviceStatus:
    """What the agent knows about its model and inferences; the reporter adds the rest.

    Attributes:
        model_version: Bundle version, or None when no model is loaded.
        model_sha256: Model digest, or None.
        labels: Enrolled class labels (any sequence; stored as a tuple).
        inference_count: Inferences since the agent started.
        latency_p50_ms: Median latency, None before any inference.
        latency_p95_ms: 95th percentile latency, None before any inference.
        accuracy: Few-shot accuracy on labelled images in [0, 1], None when unknown.
        evaluated: How many labelled images ``accuracy`` is over.
    """

    model_version: str | None = None
    model_sha256: str | None = None
    labels: Sequence[str] = ()
    inference_count: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    accuracy: float | None = None
    evaluated: int = 0

    def __post_init__(self) -> None:
        # A tuple keeps the frozen dataclass really immutable even if the agent passes its list.
        object.__setattr__(self, "labels", tuple(self.labels))


class DeviceReporter(StartStop):
    """Publishes one device's birth, telemetry every ``interval_s`` and death.

    The Last Will (``Death(reason="lost")``, retained, QoS 1) is registered at connect time, so the
    broker announces the device as lost if the process dies or the network drops. A retained
    birth is published on every (re)connect. All messages carry ``session``, so the monitor can
    tell a stale death of an earlier process from the current one.

    Args:
        broker_url: ``mqtt://host[:port]`` (port defaults to 1883).
        device_id: Device id, 1-64 characters ``[A-Za-z0-9_.-]``.
        fleet: Fleet id, same alphabet.
        interval_s: Seconds between telemetry messages (> 0).
        status: Callable returning the agent's current :class:`DeviceStatus`; None reports an
            empty status (no model).
        board: Board profile name for the birth message.
        backend: Interpreter backend name for the birth message.
        keepalive_s: MQTT keepalive; the broker declares the device lost after ~1.5x this silence.
        connect_timeout_s: How long :meth:`start` waits for the broker.

    Raises:
        FleetError: On a bad broker URL or bad interval/keepalive.
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
    ) -> None:
        self._url = broker_url
        _mqtt.parse_broker_url(broker_url)  # fail at construction, not in a thread later
        self._device_id = validate_id(device_id, "device id")
        self._fleet = validate_id(fleet, "fleet")
        if not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise FleetError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        if not isinstance(keepalive_s, int) or isinstance(keepalive_s, bool) or keepalive_s < 1:
            raise FleetError(f"keepalive_s must be an integer >= 1, got {keepalive_s!r}")
        self._interval_s = float(interval_s)
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = float(connect_timeout_s)
        self._status = status if status is not None else DeviceStatus
        self._board = board
        self._backend = backend
        # Milliseconds since the epoch: a restarted process always gets a larger session. Each
        # reconnect takes a larger one too (see _on_disconnect).
        self._session = int(time.time() * 1000)
        self._boot = self._session  # constant for the process: (boot, n) names a telemetry
        self._n = 0
        self._bd_seq = 0  # Sparkplug bdSeq: +1 per connection, shared by birth and Last Will
        self._seq = 0  # Sparkplug seq: 0 in the birth, then +1 per message, wrapping at 256
        # _lock orders seq on the wire and is held across client.publish(); _session_lock guards
        # only the session and is never held while calling into paho, so paho's thread (which
        # takes it in _on_disconnect) cannot deadlock against a publisher holding _lock.
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._timer: threading.Thread | None = None
        self._state = "new"  # new -> started -> stopped; one-shot on purpose
        self._t0 = time.monotonic()
        self._process = psutil.Process()
        self._last_status = DeviceStatus()
        self._waiter = _mqtt.ConnectWaiter()
        self._birth_info: mqtt.MQTTMessageInfo | None = None

        self._client = _mqtt.new_client(f"edgemeta-{self._fleet}-{self._device_id}")
        self._client.max_queued_messages_set(_MAX_QUEUED)
        self._set_will()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    # --- public API -----------------------------------------------------------------------------

    @property
    def session(self) -> int:
        """Birth/death session id of the current connection (grows on every reconnect)."""
        with self._session_lock:
            return self._session

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
        """True while connected to the broker."""
        return self._client.is_connected()

    def start(self) -> None:
        """Connect, publish the birth and start the telemetry timer.

        Returns once the broker has acknowledged the birth (or ``connect_timeout_s`` passed).

        Raises:
            FleetError: If the broker cannot be reached within ``connect_timeout_s``, or the
                reporter was already started.
        """
        if self._state != "new":
            raise FleetError(f"reporter is {self._state}: expected a new reporter (create another)")
        _mqtt.connect(
            self._client, self._url, self._keepalive_s, self._connect_timeout_s, self._waiter
        )
        self._state = "started"
        self._t0 = time.monotonic()
        info = self._birth_info
        if info is not None:
            self._wait(info, self._connect_timeout_s, "birth")
        self._timer = threading.Thread(
            target=self._run_timer, name=f"edgemeta-telemetry-{self._device_id}", daemon=True
        )
        self._timer.start()

    def publish_now(self, timeout_s: float = 5.0) -> Telemetry:
        """Publish one telemetry message now and wait for the broker's PUBACK.

        Args:
            timeout_s: Longest wait for the PUBACK.

        Returns:
            The message sent.

        Raises:
            FleetError: If the reporter is not started, or not connected, or no PUBACK arrived in
                time (the message stays queued and is sent after a reconnect).
        """
        if self._state != "started":
            raise FleetError(f"reporter is {self._state}: call start() before publish_now()")
        msg, info = self._publish_telemetry()
        self._wait(info, timeout_s, f"telemetry seq {msg.seq}", strict=True)
        return msg

    def publish_birth(self, timeout_s: float = 5.0) -> Birth:
        """Publish the birth again, e.g. after the agent swapped its model.

        Raises:
            FleetError: If not started, not connected, or no PUBACK arrived in time.
        """
        if self._state != "started":
            raise FleetError(f"reporter is {self._state}: call start() before publish_birth()")
        msg = self._birth()
        info = self._client.publish(self._topic("birth"), msg.to_payload(), qos=1, retain=True)
        self._wait(info, timeout_s, "birth", strict=True)
        return msg

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish a graceful death, disconnect and join the threads. Safe to call twice.

        Args:
            timeout_s: Longest wait for the timer thread and for the death's PUBACK.
        """
        if self._state != "started":
            self._state = "stopped"
            return
        self._state = "stopped"
        self._stop_event.set()
        if self._timer is not None:
            self._timer.join(timeout_s)
        if self._client.is_connected():
            with self._lock:
                death = Death(self._device_id, self._fleet, self.session, time.time(), "graceful",
                              bd_seq=self._bd_seq, seq=self._next_seq())
            info = self._client.publish(self._topic("death"), death.to_payload(), qos=1, retain=True)
            self._wait(info, timeout_s, "graceful death")
        else:
            log.warning("reporter %s stopping while disconnected: no graceful death sent; "
                        "the broker's Last Will reports it as lost", self._device_id)
        # A clean DISCONNECT makes the broker discard the Last Will, so "lost" is not sent too.
        self._client.disconnect()
        self._client.loop_stop()

    # --- internals ------------------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return topic(self._fleet, self._device_id, kind)

    def _set_will(self) -> None:
        # paho sends the Will with the next CONNECT, so this must run before each (re)connect.
        will = Death(self._device_id, self._fleet, self._session, ts=None, reason="lost",
                     bd_seq=self._bd_seq)
        self._client.will_set(self._topic("death"), will.to_payload(), qos=1, retain=True)

    def _current_status(self) -> DeviceStatus:
        """Ask the agent for its status; a broken callback must not kill the reporter."""
        try:
            st = self._status()
        except Exception:  # noqa: BLE001 - agent code; report with the last good status
            log.warning("status callback of %s failed; reusing the last status",
                        self._device_id, exc_info=True)
            return self._last_status
        if not isinstance(st, DeviceStatus):
            log.warning("status callback of %s returned %s, expected DeviceStatus; "
                        "reusing the last status", self._device_id, type(st).__name__)
            return self._last_status
        self._last_status = st
        return st

    def _next_seq(self) -> int:
        # Called with self._lock held.
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _birth(self) -> Birth:
        st = self._current_status()
        with self._lock:
            self._seq = 0  # a birth restarts the sequence
            with self._session_lock:
                bd_seq = self._bd_seq
            return Birth(
                device_id=self._device_id, fleet=self._fleet, session=self.session,
                ts=time.time(), model_version=st.model_version, model_sha256=st.model_sha256,
                backend=self._backend, board=self._board,
                labels=tuple(st.labels[:MAX_LABELS_SENT]), agent_version=__version__,
                bd_seq=bd_seq, seq=0,
            )

    def _publish_telemetry(self) -> tuple[Telemetry, mqtt.MQTTMessageInfo]:
        st = self._current_status()
        rss = self._process.memory_info().rss
        # One lock around build + publish keeps seq strictly increasing on the wire even when
        # publish_now() races the timer thread.
        with self._lock:
            msg = Telemetry(
                device_id=self._device_id, fleet=self._fleet, session=self.session,
                seq=self._next_seq(), ts=time.time(), uptime_s=time.monotonic() - self._t0,
                model_version=st.model_version, model_sha256=st.model_sha256,
                labels=tuple(st.labels[:MAX_LABELS_SENT]), n_classes=len(st.labels),
                inference_count=st.inference_count, latency_p50_ms=st.latency_p50_ms,
                latency_p95_ms=st.latency_p95_ms, rss_bytes=rss, accuracy=st.accuracy,
                evaluated=st.evaluated, boot=self._boot, n=self._n,
            )
            self._n += 1
            info = self._client.publish(self._topic("telemetry"), msg.to_payload(), qos=1)
        return msg, info

    def _wait(self, info: mqtt.MQTTMessageInfo, timeout_s: float, what: str,
              strict: bool = False) -> None:
        """Wait for a PUBACK; raise FleetError when ``strict``, else log a warning."""
        problem: str | None = None
        try:
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                problem = f"no PUBACK within {timeout_s:g} s"
        except (RuntimeError, ValueError) as exc:
            problem = str(exc)
        if problem is None:
            return
        text = f"{what} of {self._device_id} to {self._url} not acknowledged: {problem}"
        if strict:
            raise FleetError(text)
        log.warning("%s", text)

    def _run_timer(self) -> None:
        # The first telemetry goes out right away so a monitor shows metrics without waiting
        # a whole interval; the loop ends when stop() sets the event.
        delay = 0.0
        while not self._stop_event.wait(delay):
            delay = self._interval_s
            if not self._client.is_connected():
                continue  # paho reconnects on its own; the birth follows in _on_connect
            try:
                self._publish_telemetry()
            except MessageError:
                log.warning("telemetry of %s not sent: status has invalid values",
                            self._device_id, exc_info=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if not reason_code.is_failure:
            # Published from paho's thread without waiting: waiting here would block the loop
            # that has to read the PUBACK.
            try:
                birth = self._birth()
                self._birth_info = client.publish(
                    self._topic("birth"), birth.to_payload(), qos=1, retain=True
                )
                if self._state == "started":
                    # A reconnect: the new session has no metrics at the monitor yet.
                    self._publish_telemetry()
            except MessageError:
                log.warning("birth/telemetry of %s not sent: status has invalid values",
                            self._device_id, exc_info=True)
        self._waiter.on_connect(reason_code)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self._state != "started":
            return  # our own stop()
        # The broker may already have published this connection's Will ("lost", session S).
        # Reconnecting with a birth of the same S would then look stale to the monitor, so the
        # next connection gets a larger session and its own Will.
        with self._session_lock:
            self._session = max(self._session + 1, int(time.time() * 1000))
            self._bd_seq = (self._bd_seq + 1) % 256
            self._set_will()
            session = self._session
        log.warning("reporter %s lost its broker connection (%s); reconnecting as session %d",
                    self._device_id, reason_code, session)
