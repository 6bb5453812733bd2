"""Host side: follow a fleet's births, telemetry, replies and deaths; keep per-device state.

The monitor is a Sparkplug-style host application: it announces itself with a retained
:class:`~edgemeta.fleet.schema.HostState` (its Last Will says ``online: false``), checks every
device's ``seq`` for gaps, de-duplicates replayed telemetry by ``(boot, n)``, and asks a device
whose state it cannot trust (gap, no birth seen) to re-publish its birth with a ``rebirth``
command. The bookkeeping itself lives in :mod:`edgemeta.fleet.tracker`, the alert rules in
:mod:`edgemeta.fleet.alerts`.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._guard import guarded
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet.alerts import Alert, AlertConfig, evaluate, silence_limit
from edgemeta.fleet.commander import default_host_id
from edgemeta.fleet.schema import (
    Birth,
    Command,
    Death,
    HostState,
    Reply,
    Telemetry,
    decode,
    host_topic,
    parse_topic,
    topic,
    topic_filter,
    validate_id,
)
from edgemeta.fleet.tracker import MAX_DEVICES, DeviceState, FleetTracker
from edgemeta.fleet.view import render_table, watch

__all__ = ["MAX_DEVICES", "MAX_ERRORS", "DeviceState", "FleetMonitor", "default_monitor_id",
           "render_table", "watch"]

log = logging.getLogger(__name__)

# Keep the last N malformed messages only: a misbehaving publisher must not grow memory.
MAX_ERRORS = 100
# Malformed messages are logged at most once per this many seconds of monitor time (each one is
# still counted and kept): one misconfigured publisher at fleet scale would otherwise write a
# warning per message, onto the very terminal where `fleet watch` draws its table.
_ERROR_LOG_S = 60.0
# Kinds the monitor tracks; cmd (its own and other hosts' commands) is ignored before decoding,
# so a 1 MiB enroll command costs a topic split, not a JSON parse.
_TRACKED = frozenset(("birth", "telemetry", "death", "reply"))
# Births and deaths are retained and rare: every monitor of a share group subscribes to them
# directly (shared subscriptions get no retained messages in MQTT 5), so each one knows every
# device. The frequent kinds are split across the group.
_SHARED_KINDS = ("telemetry", "reply")
_DIRECT_KINDS = ("birth", "death")
_WAIT_PUBACK_S = 5.0
_Tracked = Birth | Telemetry | Death | Reply


def default_monitor_id(role: str = "monitor") -> str:
    """A stable host id ``<role>-<hostname>`` (at most 64 characters of the id alphabet).

    Stable, so every run of a tool on one machine reuses one retained host-state topic instead of
    leaving a new ``online: false`` behind each time (devices download every retained state).
    """
    return f"{role}-{default_host_id()}"[:64].rstrip("-.")


class FleetMonitor(StartStop):
    """Subscribes to ``edgemeta/v1/<fleet_pattern>/+/+`` and tracks every device seen.

    Args:
        broker_url: ``mqtt://host[:port]``.
        fleet_pattern: A fleet id, or ``+`` for all fleets.
        offline_after_s: Silence limit for a device whose telemetry cadence is unknown.
        clock: Time source in unix seconds; injectable for tests.
        connect_timeout_s: How long :meth:`start` waits for the broker.
        alert_config: Alert thresholds (``offline_after_s`` above overrides its field).
        host_id: Id of this monitor in its retained host state (``edgemeta/v1/_host/<id>``);
            ``monitor-<hostname>`` by default (:func:`default_monitor_id`), so repeated runs
            reuse one retained topic. Two monitors running at once on one machine should get
            different ids: the one that stops says ``online: false`` for both.
        transient: A one-shot monitor (``fleet status``, a roll-out's discovery): a clean
            :meth:`stop` clears its retained host state (empty retained payload) instead of
            leaving ``online: false`` on the broker. Its Last Will still says ``online: false``.
        max_devices: Most devices tracked; messages of further devices are counted
            (``overflow`` in :meth:`stats`), logged and otherwise ignored.
        share_group: Join this MQTT shared-subscription group for telemetry and replies, so
            several monitors split the load. Uses MQTT 5. Gap detection and the silence rule
            for offline are off in this mode unless ``detect_gaps`` says otherwise (each
            monitor sees only part of a sequence): devices go offline by their deaths.
        detect_gaps: Check sequence numbers; default True, or False with ``share_group``.
        request_rebirth: Publish ``rebirth`` commands on gaps and unknown sessions.
        rebirth_interval_s: At most one rebirth request per device per this many seconds.
        publish: Replaces the MQTT publish of commands ``(topic, payload) -> None``; for tests.
        mqtt5: Speak MQTT 5 (default: only with ``share_group``). With MQTT 5 the broker may
            keep up to 65,535 QoS 1 messages in flight to the monitor, so a burst of a whole
            fleet's telemetry is not dropped by mosquitto's per-client queue (20 in flight +
            1,000 queued for an MQTT 3.1.1 client). The embedded amqtt broker refuses MQTT 5.

    Raises:
        FleetError: On a bad URL, threshold or ``max_devices``.
        MessageError: On a bad ``fleet_pattern``, ``host_id`` or ``share_group``.
    """

    def __init__(
        self,
        broker_url: str,
        fleet_pattern: str = "+",
        offline_after_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
        connect_timeout_s: float = 10.0,
        alert_config: AlertConfig | None = None,
        host_id: str | None = None,
        share_group: str | None = None,
        detect_gaps: bool | None = None,
        request_rebirth: bool = True,
        rebirth_interval_s: float = 10.0,
        publish: Callable[[str, bytes], None] | None = None,
        mqtt5: bool | None = None,
        transient: bool = False,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        _mqtt.parse_broker_url(broker_url)
        if (isinstance(offline_after_s, bool) or not isinstance(offline_after_s, (int, float))
                or not offline_after_s > 0):
            raise FleetError(f"offline_after_s must be a positive number, got {offline_after_s!r}")
        base = alert_config or AlertConfig()
        self.alert_config = AlertConfig(**{**asdict(base), "offline_after_s": offline_after_s})
        self._url = broker_url
        self._fleet_pattern = fleet_pattern
        self._filter = topic_filter(fleet=fleet_pattern)
        self.host_id = validate_id(host_id if host_id is not None else default_monitor_id(),
                                   "host id")
        self.transient = bool(transient)
        self.share_group = validate_id(share_group, "share group") \
            if share_group is not None else None
        self._clock = clock
        self._connect_timeout_s = float(connect_timeout_s)
        if isinstance(max_devices, bool) or not isinstance(max_devices, int) or max_devices < 1:
            raise FleetError(f"max_devices must be an integer >= 1, got {max_devices!r}")
        self._tracker = FleetTracker(
            detect_gaps=(share_group is None) if detect_gaps is None else bool(detect_gaps),
            rebirth_interval_s=float(rebirth_interval_s),
            max_devices=max_devices,
        )
        self._request_rebirth = request_rebirth
        self.mqtt5 = share_group is not None if mqtt5 is None else bool(mqtt5)
        self._errors: deque[tuple[str, str]] = deque(maxlen=MAX_ERRORS)
        self._error_logged_at: float | None = None
        self._errors_unlogged = 0
        self._cmd_ids = itertools.count(1)
        # A Condition lets wait_until() wake on each message instead of sleeping blindly.
        self._cond = threading.Condition()
        self._waiter = _mqtt.ConnectWaiter()
        self._subscribed = threading.Event()
        self._started = False
        self._client = self._new_client()
        self._publish = publish if publish is not None else self._mqtt_publish

    def _new_client(self) -> mqtt.Client:
        # Random suffix: two monitors on one broker must not kick each other off.
        client_id = f"edgemeta-{self.host_id}-{secrets.token_hex(3)}"
        if not self.mqtt5:
            client = _mqtt.new_client(client_id)
        else:
            # Shared subscriptions are an MQTT 5 feature (mosquitto also grants them to 3.1.1
            # clients, other brokers may not); amqtt, which knows no MQTT 5, has none anyway.
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=mqtt.MQTTv5)
            client.reconnect_delay_set(min_delay=1, max_delay=30)
        offline = HostState(self.host_id, online=False, ts=None)
        client.will_set(host_topic(self.host_id), offline.to_payload(), qos=1, retain=True)
        # Guarded: an exception escaping a paho callback would end the network thread.
        client.on_connect = guarded(self._on_connect, "monitor on_connect")
        client.on_message = guarded(self._on_message, "monitor on_message")
        client.on_subscribe = guarded(self._on_subscribe, "monitor on_subscribe")
        return client

    @property
    def detect_gaps(self) -> bool:
        """Whether sequence gaps are checked (False in a share group unless forced)."""
        return self._tracker.detect_gaps

    def subscriptions(self) -> list[str]:
        """The topic filters this monitor subscribes to."""
        if self.share_group is None:
            return [self._filter]
        shared = [f"$share/{self.share_group}/{topic_filter(self._fleet_pattern, '+', k)}"
                  for k in _SHARED_KINDS]
        return [topic_filter(self._fleet_pattern, "+", k) for k in _DIRECT_KINDS] + shared

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, announce the host state and subscribe; retained births/deaths arrive next.

        Raises:
            FleetError: If the broker cannot be reached or does not grant the subscriptions
                within the connect timeout.
        """
        if self._started:
            return
        _mqtt.connect_subscribed(self._client, self._url, 30, self._connect_timeout_s,
                                 self._waiter, self._subscribed,
                                 f"the subscriptions {self.subscriptions()}")
        self._started = True

    def stop(self) -> None:
        """Publish ``online: false`` (a transient monitor: clear the retained host state),
        disconnect and stop the network thread. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        if self._client.is_connected():
            # An empty retained payload deletes the retained message: devices drop that host.
            payload = b"" if self.transient else \
                HostState(self.host_id, online=False, ts=time.time()).to_payload()
            info = self._client.publish(host_topic(self.host_id), payload, qos=1, retain=True)
            try:
                info.wait_for_publish(_WAIT_PUBACK_S)
            except (RuntimeError, ValueError):
                log.warning("host state offline of %s not acknowledged", self.host_id)
        self._client.disconnect()
        self._client.loop_stop()

    # --- message handling -----------------------------------------------------------------------

    def handle(self, topic_name: str, payload: bytes | bytearray, retained: bool = False) -> None:
        """Apply one MQTT message to the device table; never raises on bad input.

        This is what the MQTT callback calls; tests call it directly without a broker. A malformed
        message is counted, kept in :attr:`errors` and logged as a warning. ``retained`` is the
        MQTT retain flag: a retained birth does not start a sequence the monitor can check.
        """
        rebirth: tuple[str, str, str] | None = None
        error: str | None = None
        if not payload:
            # A cleared retained message (a one-shot monitor's host state, a decommissioned
            # device's birth; MQTT 3.1.1 forwards a live clear with retain=0): it deletes
            # something, it is not a malformed message.
            with self._cond:
                self._tracker.stats["messages"] += 1
                self._cond.notify_all()
            return
        try:
            parts = parse_topic(topic_name)
            if parts.kind in _TRACKED:
                msg = cast(_Tracked, decode(parts.kind, payload))
                if (msg.fleet, msg.device_id) != (parts.fleet, parts.device_id):
                    raise MessageError(
                        f"{parts.kind} payload names {msg.fleet}/{msg.device_id} but was "
                        f"published on {topic_name}: expected the payload's fleet and device_id "
                        "to match the topic"
                    )
                now = self._clock()
                with self._cond:
                    why = self._tracker.apply(msg, now, retained)
                if why is not None and self._request_rebirth:
                    rebirth = (parts.fleet, parts.device_id, why)
        except MessageError as exc:
            error = str(exc)
        except Exception as exc:  # the monitor must survive anything on the wire
            log.exception("unexpected error handling %s", topic_name)
            error = f"internal error: {exc!r}"
        log_error = False
        unlogged = 0
        with self._cond:
            self._tracker.stats["messages"] += 1
            if error is not None:
                self._tracker.stats["errors"] += 1
                self._errors.append((str(topic_name), error))
                now = self._clock()
                last = self._error_logged_at
                # 0 <=: a host clock stepped back must not silence the warnings for hours.
                if last is None or not 0 <= now - last < _ERROR_LOG_S:
                    self._error_logged_at = now
                    log_error, unlogged, self._errors_unlogged = True, self._errors_unlogged, 0
                else:
                    self._errors_unlogged += 1
            self._cond.notify_all()
        if log_error:
            more = (f" ({unlogged} more malformed message(s) since the last warning; all are "
                    "counted in stats()['errors'], the last ones kept in errors)"
                    if unlogged else "")
            log.warning("ignoring malformed message on %r: %s%s", topic_name, error, more)
        if rebirth is not None:
            self._send_rebirth(*rebirth)

    def _send_rebirth(self, fleet: str, device: str, why: str) -> None:
        cmd = Command(id=f"rebirth-{self.host_id}-{next(self._cmd_ids)}"[:64], command="rebirth",
                      args={"reason": why}, ts=time.time(), host_id=self.host_id)
        log.info("asking %s/%s to re-publish its birth: %s", fleet, device, why)
        try:
            self._publish(topic(fleet, device, "cmd"), cmd.to_payload())
        except Exception:  # a failed request is retried on the next gap
            log.warning("rebirth request to %s/%s not sent", fleet, device, exc_info=True)

    def _mqtt_publish(self, topic_name: str, payload: bytes) -> None:
        # Not waited for: this runs on paho's network thread, which must read the PUBACK itself.
        self._client.publish(topic_name, payload, qos=1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if not reason_code.is_failure:
            if self._subscribed.is_set():
                # A reconnect: whatever was published meanwhile never reached this monitor, which
                # is not a device's gap.
                with self._cond:
                    self._tracker.resync()
            online = HostState(self.host_id, online=True, ts=time.time())
            client.publish(host_topic(self.host_id), online.to_payload(), qos=1, retain=True)
            # (Re)subscribe on every connect: clean sessions forget subscriptions.
            client.subscribe([(s, 1) for s in self.subscriptions()])
        self._waiter.on_connect(reason_code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()
        else:
            log.error("broker refused the subscriptions %s: %s", self.subscriptions(),
                      reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, message.payload, bool(message.retain))

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
            return self._tracker.stats["errors"]

    @property
    def message_count(self) -> int:
        """How many messages were handled (good and bad)."""
        with self._cond:
            return self._tracker.stats["messages"]

    def stats(self) -> dict[str, int]:
        """Counters since construction.

        Keys: ``messages`` (all handled), ``telemetry`` (received), ``telemetry_unique`` (distinct
        ``(boot, n)``), ``duplicates``, ``unverifiable`` (too old for the replay window),
        ``gaps`` (gap events), ``missed`` (sequence numbers skipped), ``late`` (messages of an
        older connection), ``errors``, ``rebirths_requested``, ``rebirths_suppressed`` (by the
        per-device rate limit), ``overflow`` (messages of devices beyond ``max_devices``,
        ignored) and ``devices``.
        """
        with self._cond:
            return self._tracker.stats_dict()

    def snapshot(self) -> list[DeviceState]:
        """Current state of every device, sorted by fleet then device id."""
        now = self._clock()
        cfg = self.alert_config
        # In a share group this monitor gets only its share of each device's telemetry: long
        # runs that went to other members are normal, so silence says nothing and liveness
        # comes from births and deaths (the broker publishes the Will of every lost
        # connection), which every member receives directly.
        partial_view = self.share_group is not None and not self.detect_gaps
        with self._cond:
            return self._tracker.states(
                now, lambda interval: math.inf if partial_view else silence_limit(cfg, interval))

    def alerts(self, states: list[DeviceState] | None = None) -> list[Alert]:
        """Alerts over ``states`` (a fresh snapshot by default); see :mod:`edgemeta.fleet.alerts`."""
        return evaluate(self.snapshot() if states is None else states, self._clock(),
                        self.alert_config)

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
        """JSON-serialisable status: devices, alerts, counters and the recent errors."""
        states = self.snapshot()
        devices = []
        for st in states:
            d = asdict(st)
            d["labels"] = list(st.labels)
            devices.append(d)
        alerts = [asdict(a) for a in self.alerts(states)]
        with self._cond:
            recent = [{"topic": t, "error": e} for t, e in self._errors]
            stats = self._tracker.stats_dict()
        return {"host_id": self.host_id, "devices": devices, "alerts": alerts, "stats": stats,
                "errors": stats["errors"], "recent_errors": recent[-10:]}
