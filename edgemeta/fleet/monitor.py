"""Host side: follow a fleet's birth/telemetry/death messages and keep per-device state."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet.schema import Birth, Death, Telemetry, decode, parse_topic, topic_filter
from edgemeta.fleet.view import render_table, watch
from edgemeta.fleet._lifecycle import StartStop

__all__ = ["DeviceState", "FleetMonitor", "MAX_ERRORS", "render_table", "watch"]

log = logging.getLogger(__name__)

# Keep the last N malformed messages only: a misbehaving publisher must not grow memory.
MAX_ERRORS = 100
# Kinds the monitor tracks; other kinds under the namespace (future cmd/reply/ota) are ignored.
_TRACKED = ("birth", "telemetry", "death")


@dataclass(frozen=True)
class DeviceState:
    """What the monitor knows about one device.

    ``last_seen`` is the monitor's clock (unix seconds) at the last birth or telemetry received,
    not the device's own timestamp, so board clock skew does not matter. ``death_reason`` is the
    reason of a death that belongs to the current session, else None (also None when the device
    is offline only because it went silent).
    """

    fleet: str
    device_id: str
    state: str
    last_seen: float | None
    model_version: str | None
    model_sha256: str | None
    backend: str | None
    board: str | None
    labels: tuple[str, ...]
    n_classes: int
    inference_count: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    accuracy: float | None
    evaluated: int | None
    rss_bytes: int | None
    uptime_s: float | None
    last_seq: int | None
    death_reason: str | None
    session: int | None = None


@dataclass
class _Device:
    """Mutable per-device bookkeeping; only touched under the monitor's lock."""

    fleet: str
    device_id: str
    alive_session: int | None = None  # newest session seen alive (birth or telemetry)
    death_session: int | None = None
    death_reason: str | None = None
    last_seen: float | None = None
    birth: Birth | None = None
    telemetry: Telemetry | None = None


class FleetMonitor(StartStop):
    """Subscribes to ``edgemeta/v1/<fleet_pattern>/+/+`` and tracks every device seen.

    Args:
        broker_url: ``mqtt://host[:port]``.
        fleet_pattern: A fleet id, or ``+`` for all fleets.
        offline_after_s: A device silent for longer than this shows offline.
        clock: Time source in unix seconds; injectable for tests.
        connect_timeout_s: How long :meth:`start` waits for the broker.

    Raises:
        FleetError: On a bad URL or ``offline_after_s``.
        MessageError: On a bad ``fleet_pattern``.
    """

    def __init__(
        self,
        broker_url: str,
        fleet_pattern: str = "+",
        offline_after_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
        connect_timeout_s: float = 10.0,
    ) -> None:
        _mqtt.parse_broker_url(broker_url)
        if not isinstance(offline_after_s, (int, float)) or not offline_after_s > 0:
            raise FleetError(f"offline_after_s must be a positive number, got {offline_after_s!r}")
        self._url = broker_url
        self._filter = topic_filter(fleet=fleet_pattern)
        self._offline_after_s = float(offline_after_s)
        self._clock = clock
        self._connect_timeout_s = float(connect_timeout_s)
        self._devices: dict[tuple[str, str], _Device] = {}
        self._errors: deque[tuple[str, str]] = deque(maxlen=MAX_ERRORS)
        self._error_count = 0
        self._message_count = 0
        # A Condition lets wait_until() wake on each message instead of sleeping blindly.
        self._cond = threading.Condition()
        self._waiter = _mqtt.ConnectWaiter()
        self._subscribed = threading.Event()
        self._started = False
        # Random suffix: two monitors on one broker must not kick each other off.
        self._client = _mqtt.new_client(f"edgemeta-monitor-{secrets.token_hex(4)}")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe; retained births/deaths arrive right after.

        Raises:
            FleetError: If the broker cannot be reached within the connect timeout.
        """
        if self._started:
            return
        _mqtt.connect(self._client, self._url, 30, self._connect_timeout_s, self._waiter)
        # Messages published between CONNACK and SUBACK would be missed: wait for the SUBACK.
        if not self._subscribed.wait(self._connect_timeout_s):
            self._client.disconnect()
            self._client.loop_stop()
            raise FleetError(f"MQTT broker at {self._url} did not acknowledge the subscription to "
                             f"{self._filter} within {self._connect_timeout_s:g} s")
        self._started = True

    def stop(self) -> None:
        """Disconnect and stop the network thread. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

    # --- message handling -----------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Apply one MQTT message to the device table; never raises on bad input.

        This is what the MQTT callback calls; tests call it directly without a broker. A malformed
        message is counted, kept in :attr:`errors` and logged as a warning.
        """
        try:
            self._apply(topic, payload)
        except MessageError as exc:
            self._record_error(topic, str(exc))
        except Exception as exc:  # noqa: BLE001 - the monitor must survive anything on the wire
            log.exception("unexpected error handling %s", topic)
            self._record_error(topic, f"internal error: {exc!r}")
        with self._cond:
            self._message_count += 1
            self._cond.notify_all()

    def _apply(self, topic: str, payload: bytes) -> None:
        parts = parse_topic(topic)
        if parts.kind not in _TRACKED:
            return
        msg = decode(parts.kind, payload)
        if (msg.fleet, msg.device_id) != (parts.fleet, parts.device_id):
            raise MessageError(
                f"{parts.kind} payload names {msg.fleet}/{msg.device_id} but was published on "
                f"{topic}: expected the payload's fleet and device_id to match the topic"
            )
        now = self._clock()
        with self._cond:
            dev = self._devices.get((parts.fleet, parts.device_id))
            if dev is None:
                dev = self._devices[(parts.fleet, parts.device_id)] = _Device(
                    parts.fleet, parts.device_id
                )
            if isinstance(msg, Death):
                self._apply_death(dev, msg)
            else:
                self._apply_alive(dev, msg, now)

    @staticmethod
    def _apply_death(dev: _Device, msg: Death) -> None:
        # Deaths from older sessions than one already known are stale (typically the retained
        # Last Will of the previous process) and must not mark a re-born device offline.
        if dev.death_session is not None and msg.session < dev.death_session:
            return
        dev.death_session = msg.session
        dev.death_reason = msg.reason

    @staticmethod
    def _apply_alive(dev: _Device, msg: Birth | Telemetry, now: float) -> None:
        if dev.alive_session is not None and msg.session < dev.alive_session:
            return  # a late message of a previous process
        if dev.alive_session is not None and msg.session > dev.alive_session:
            dev.telemetry = None  # metrics of the previous process no longer apply
        dev.alive_session = msg.session
        dev.last_seen = now
        if isinstance(msg, Birth):
            dev.birth = msg
        elif dev.telemetry is None or msg.seq >= dev.telemetry.seq:
            dev.telemetry = msg  # QoS 1 may redeliver an older seq; keep the newest

    def _record_error(self, topic: str, message: str) -> None:
        log.warning("ignoring malformed message on %r: %s", topic, message)
        with self._cond:
            self._error_count += 1
            self._errors.append((str(topic), message))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if not reason_code.is_failure:
            # (Re)subscribe on every connect: clean sessions forget subscriptions.
            client.subscribe(self._filter, qos=1)
        self._waiter.on_connect(reason_code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()
        else:
            log.error("broker refused the subscription to %s: %s", self._filter, reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, message.payload)

    # --- queries --------------------------------------------------------------------------------

    @property
    def errors(self) -> list[tuple[str, str]]:
        """The last :data:`MAX_ERRORS` malformed messages as ``(topic, message)``."""
        with self._cond:
            return list(self._errors)

    @property
    def error_count(self) -> int:
        """How many malformed messages were seen in total."""
        with self._cond:
            return self._error_count

    @property
    def message_count(self) -> int:
        """How many messages were handled (good and bad)."""
        with self._cond:
            return self._message_count

    def snapshot(self) -> list[DeviceState]:
        """Current state of every device, sorted by fleet then device id."""
        now = self._clock()
        with self._cond:
            devices = sorted(self._devices.values(), key=lambda d: (d.fleet, d.device_id))
            return [self._state_of(d, now) for d in devices]

    def _state_of(self, dev: _Device, now: float) -> DeviceState:
        alive = dev.alive_session
        dead = dev.death_session
        # A death of the same session as the newest birth/telemetry wins: the device said goodbye
        # (or the broker did for it) after its birth.
        killed = dead is not None and (alive is None or dead >= alive)
        silent = dev.last_seen is None or now - dev.last_seen > self._offline_after_s
        online = alive is not None and not killed and not silent
        b, t = dev.birth, dev.telemetry
        # Telemetry is newer than the birth when both exist (model may have been swapped).
        src_model = t if t is not None else b
        labels = tuple(src_model.labels) if src_model is not None else ()
        return DeviceState(
            fleet=dev.fleet,
            device_id=dev.device_id,
            state="online" if online else "offline",
            last_seen=dev.last_seen,
            model_version=src_model.model_version if src_model else None,
            model_sha256=src_model.model_sha256 if src_model else None,
            backend=b.backend if b else None,
            board=b.board if b else None,
            labels=labels,
            n_classes=t.n_classes if t else len(labels),
            inference_count=t.inference_count if t else None,
            latency_p50_ms=t.latency_p50_ms if t else None,
            latency_p95_ms=t.latency_p95_ms if t else None,
            accuracy=t.accuracy if t else None,
            evaluated=t.evaluated if t else None,
            rss_bytes=t.rss_bytes if t else None,
            uptime_s=t.uptime_s if t else None,
            last_seq=t.seq if t else None,
            death_reason=dev.death_reason if killed else None,
            session=max((s for s in (alive, dead) if s is not None), default=None),
        )

    def device(self, device_id: str, fleet: str | None = None) -> DeviceState | None:
        """State of one device (first match over fleets when ``fleet`` is None), or None."""
        for st in self.snapshot():
            if st.device_id == device_id and (fleet is None or st.fleet == fleet):
                return st
        return None

    def wait_until(
        self, predicate: Callable[[list[DeviceState]], bool], timeout_s: float
    ) -> bool:
        """Block until ``predicate(snapshot())`` is true or ``timeout_s`` passes.

        Re-evaluates on every message and at least every 0.1 s (silence-based offline needs no
        message). Uses the real monotonic clock for the timeout, not the injected one.

        Returns:
            True if the predicate became true, False on timeout.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            if predicate(self.snapshot()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(min(0.1, remaining))

    def status_dict(self) -> dict[str, Any]:
        """JSON-serialisable status: devices, error count and the recent errors."""
        devices = []
        for st in self.snapshot():
            d = asdict(st)
            d["labels"] = list(st.labels)
            devices.append(d)
        with self._cond:
            recent = [{"topic": t, "error": e} for t, e in self._errors]
            count = self._error_count
        return {"devices": devices, "errors": count, "recent_errors": recent[-10:]}


