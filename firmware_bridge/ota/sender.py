"""Host side of over-the-air flashing: many transfers multiplexed on one MQTT connection.

:class:`OtaEngine` owns one paho client subscribed to ``edgemeta/v1/+/+/ota/status``. Each
:class:`Transfer` is a small state machine driven by the board's status messages (on paho's
network thread) and by one timer thread for retries and deadlines; there is no thread per device.

Flow per device: offer -> board answers ``need`` (missing chunk ranges) -> chunks are sent, at most
``window`` beyond what the board has acknowledged -> the board acknowledges every few chunks and
asks again for anything missing -> ``installing`` -> ``installed`` / ``failed`` / ``rejected``. A
board that goes silent is offered the bundle again (it answers with what it still misses), a
bounded number of times; every transfer also has an overall deadline.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.bundle import read_bundle
from edgemeta.errors import BundleError, FlashError, InstallError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._lifecycle import StartStop
from firmware_bridge.install import InstallResult
from firmware_bridge.ota._guard import never_raises
from firmware_bridge.ota.protocol import (
    ACK_EVERY, DEFAULT_CHUNK_BYTES, FINAL_STATES, Offer, Status, decode_status, encode_chunk,
    new_transfer_id, ota_filter, ota_topic, parse_ota_topic,
)

__all__ = ["OtaEngine", "Transfer"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Transfer:
    """One bundle going to one device; read its fields, or call :meth:`result`.

    ``state`` is ``offered`` until the board answers, then the board's last state (``need``,
    ``receiving``, ``installing``, ``installed``, ``failed``, ``rejected``).
    """

    fleet: str
    device: str
    offer: Offer
    data: bytes = field(repr=False)
    deadline: float
    state: str = "offered"
    status: Status | None = None
    reason: str | None = None
    message: str | None = None
    chunks_sent: int = 0
    offers_sent: int = 0
    wire_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    # send window bookkeeping (engine lock); the queue holds [start, end) ranges, never indices
    _queue: deque = field(default_factory=deque, repr=False)
    _base: int = 0
    _sent_round: int = 0
    _last_offer: float = 0.0
    _last_progress: float = field(default_factory=time.monotonic)
    _retries: int = 0

    @property
    def received(self) -> int:
        return self.status.received if self.status is not None else 0

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    @property
    def ok(self) -> bool:
        return self.state == "installed"

    def result(self) -> InstallResult:
        """The board's :class:`InstallResult`.

        Raises:
            InstallError: The board refused or failed (``reason`` from the board), or the transfer
                timed out (``reason="timeout"``) or the device never answered (``"offline"``).
            FlashError: If the transfer is not finished yet.
        """
        if not self.done.is_set():
            raise FlashError(f"transfer to {self.fleet}/{self.device} is still {self.state}")
        st = self.status
        if self.state == "installed" and st is not None:
            return InstallResult(st.version or self.offer.version, st.previous_version,
                                 Path(st.path or ""), st.changed)
        reason = self.reason or "io"
        raise InstallError(f"{self.fleet}/{self.device} {self.state} ({reason}): "
                           f"{self.message or 'no details'}", reason)


class OtaEngine(StartStop):
    """Sends bundles to devices over one MQTT connection.

    Args:
        broker_url: ``mqtt://host[:port]``.
        window: Chunks sent ahead of the board's acknowledgements, per transfer.
        offer_retry_s: Re-offer this often while a device has not answered yet.
        answer_timeout_s: Give up on a device that answers no offer for this long (``offline``).
        stall_s: Re-offer when a device that was receiving sends nothing for this long.
        max_stalls: How many stalls a transfer survives before it fails (``timeout``).
        connect_timeout_s: How long :meth:`start` waits for the broker.
    """

    def __init__(self, broker_url: str, *, window: int = 32, offer_retry_s: float = 2.0,
                 answer_timeout_s: float = 10.0, stall_s: float = 10.0, max_stalls: int = 5,
                 connect_timeout_s: float = 10.0) -> None:
        _mqtt.parse_broker_url(broker_url)
        if window <= ACK_EVERY:
            # The board acknowledges every ACK_EVERY chunks: a smaller window would wait forever.
            raise FlashError(f"window must be more than {ACK_EVERY} chunks, got {window}")
        self.url = broker_url
        self._window = window
        self._offer_retry_s = offer_retry_s
        self._answer_timeout_s = answer_timeout_s
        self._stall_s = stall_s
        self._max_stalls = max_stalls
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._transfers: dict[tuple[str, str], Transfer] = {}
        self._changed = threading.Condition(self._lock)
        self.wire_bytes = 0
        self.ignored = 0  # malformed or stale statuses
        self.invalid = 0  # statuses of a running transfer that contradict its offer (also ignored)
        self._waiter = _mqtt.ConnectWaiter()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._started = False
        self._client = _mqtt.new_client(f"edgemeta-ota-host-{secrets.token_hex(4)}")
        # Many transfers share this connection: let more QoS 1 messages be in flight at once.
        self._client.max_inflight_messages_set(200)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe to every device's OTA status.

        Raises:
            FleetError: The broker cannot be reached or did not acknowledge in time.
        """
        if self._started:
            return
        _mqtt.connect_subscribed(self._client, self.url, 30, self._connect_timeout_s,
                                 self._waiter, self._subscribed, "the OTA status subscription")
        self._started = True
        self._timer = threading.Thread(target=self._run_timer, daemon=True, name="edgemeta-ota")
        self._timer.start()

    def stop(self) -> None:
        """Fail transfers still running (``reason="cancelled"``) and disconnect."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        with self._lock:
            for t in self._transfers.values():
                if not t.done.is_set():
                    self._fail(t, "cancelled", "the host stopped before the transfer finished")
        if self._timer is not None:
            self._timer.join(5.0)
        self._client.disconnect()
        self._client.loop_stop()

    # --- API --------------------------------------------------------------------------------------

    def send(self, fleet: str, device: str, data: bytes, *, allow_downgrade: bool = False,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES, timeout_s: float = 300.0,
             version: str | None = None) -> Transfer:
        """Offer ``data`` (a bundle's bytes) to ``fleet/device`` and start the transfer.

        Raises:
            FlashError: The bytes are not a valid bundle, the engine is not started, or a transfer
                to that device is already running.
        """
        if not self._started:
            raise FlashError("OTA engine is not started: call start() first")
        if version is None:
            try:
                version = read_bundle(data).version
            except BundleError as exc:
                raise FlashError(f"cannot send to {fleet}/{device}: {exc}") from exc
        try:
            offer = Offer(new_transfer_id(), fleet, device, hashlib.sha256(data).hexdigest(),
                          len(data), chunk_bytes, -(-len(data) // max(1, chunk_bytes)), version,
                          allow_downgrade)
        except MessageError as exc:
            raise FlashError(f"cannot send to {fleet}/{device}: {exc}") from exc
        with self._lock:
            old = self._transfers.get((fleet, device))
            if old is not None and not old.done.is_set():
                raise FlashError(f"a transfer to {fleet}/{device} is already running")
            t = Transfer(fleet, device, offer, bytes(data), time.monotonic() + timeout_s)
            self._transfers[(fleet, device)] = t
            self._send_offer(t)
        return t

    def transfers(self) -> list[Transfer]:
        with self._lock:
            return list(self._transfers.values())

    def wait(self, transfers: Iterable[Transfer], timeout_s: float | None = None) -> bool:
        """Wait until all ``transfers`` are done (True) or ``timeout_s`` passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(transfers)
        with self._changed:
            while True:
                pending = [t for t in pending if not t.done.is_set()]
                if not pending:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.2 if left is None else min(0.2, left))

    # --- sending (engine lock held) ---------------------------------------------------------------

    def _publish(self, t: Transfer, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)
        t.wire_bytes += len(payload)
        self.wire_bytes += len(payload)

    def _send_offer(self, t: Transfer) -> None:
        t.offers_sent += 1
        t._last_offer = time.monotonic()
        self._publish(t, ota_topic(t.fleet, t.device, "offer"), t.offer.to_payload())

    def _pump(self, t: Transfer) -> None:
        confirmed = t.received - t._base
        o = t.offer
        while t._queue and t._sent_round - confirmed < self._window:
            i, end = t._queue[0]
            if i + 1 < end:
                t._queue[0] = (i + 1, end)
            else:
                t._queue.popleft()
            start = i * o.chunk_bytes
            payload = encode_chunk(o.transfer_id, i, t.data[start:start + o.chunk_bytes])
            self._publish(t, ota_topic(t.fleet, t.device, "chunk"), payload)
            t._sent_round += 1
            t.chunks_sent += 1

    def _fail(self, t: Transfer, reason: str, message: str) -> None:
        t.state, t.reason, t.message = "failed", reason, message
        self._finish(t)

    def _finish(self, t: Transfer) -> None:
        t._queue.clear()
        t.finished_at = time.monotonic()
        t.done.set()
        self._changed.notify_all()

    # --- board statuses (paho thread) -------------------------------------------------------------

    @never_raises
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            fleet, device, kind = parse_ota_topic(message.topic)
            status = decode_status(message.payload) if kind == "status" else None
        except MessageError as exc:  # over-deep JSON included (decode_status says so)
            log.warning("ignoring OTA message on %s: %s", message.topic, exc)
            self.ignored += 1
            return
        if status is None or (status.fleet, status.device) != (fleet, device):
            self.ignored += 1
            return
        with self._lock:
            t = self._transfers.get((fleet, device))
            if t is None or t.done.is_set() or status.transfer_id != t.offer.transfer_id:
                self.ignored += 1  # a late status of an earlier transfer
                return
            problem = _contradiction(t.offer, status)
            if problem is not None:
                self.ignored += 1
                self.invalid += 1
                log.warning("ignoring OTA status of %s/%s: %s", fleet, device, problem)
                return
            self.wire_bytes += len(message.payload)
            t.wire_bytes += len(message.payload)
            self._apply(t, status)
            self._changed.notify_all()

    def _apply(self, t: Transfer, st: Status) -> None:
        t.status = st
        t.state = st.state
        t._last_progress = time.monotonic()
        if st.state == "need":
            # A fresh round: exactly what the board asked for, counted from what it holds now.
            t._queue = deque(st.need)  # checked against the offer: in range, ordered, disjoint
            t._base = st.received
            t._sent_round = 0
            self._pump(t)
        elif st.state == "receiving":
            self._pump(t)
        elif st.state in FINAL_STATES:
            t.reason, t.message = st.reason, st.message
            if st.state == "installed":
                t.reason = None
            self._finish(t)

    # --- timer ------------------------------------------------------------------------------------

    def _run_timer(self) -> None:
        while not self._stop.wait(0.1):
            self._tick()

    @never_raises
    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            for t in list(self._transfers.values()):
                if not t.done.is_set():
                    self._check(t, now)

    def _check(self, t: Transfer, now: float) -> None:
        if t.state == "offered" and (now > t.deadline
                                     or now - t.started > self._answer_timeout_s):
            self._fail(t, "offline", f"no answer to {t.offers_sent} offer(s) in "
                                     f"{now - t.started:.0f} s: is the device online and "
                                     "running the OTA receiver?")
        elif now > t.deadline:
            self._fail(t, "timeout", f"no result in time (last state: {t.state}, "
                                     f"{t.received}/{t.offer.chunks} chunks)")
        elif t.state == "offered":
            if now - t._last_offer > self._offer_retry_s:
                self._send_offer(t)
        elif t.state in ("need", "receiving") and now - t._last_progress > self._stall_s:
            t._retries += 1
            if t._retries > self._max_stalls:
                self._fail(t, "timeout", f"transfer stalled at {t.received}/{t.offer.chunks} "
                                         f"chunks {self._max_stalls} times")
            else:
                t._last_progress = now
                self._send_offer(t)  # the board answers with what it still misses

    # --- connection -------------------------------------------------------------------------------

    @never_raises
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        try:
            if not reason_code.is_failure:
                client.subscribe(ota_filter(kind="status"), qos=1)
        finally:
            self._waiter.on_connect(reason_code)

    @never_raises
    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()


def _contradiction(offer: Offer, st: Status) -> str | None:
    """Why a status cannot be about ``offer`` (None if it can): a board asking for chunks the
    offer does not have would otherwise make the sender fail or queue without bound."""
    if st.chunks != offer.chunks:
        return f"it counts {st.chunks} chunks, the offer has {offer.chunks}"
    if st.received > offer.chunks:
        return f"it holds {st.received} of {offer.chunks} chunks"
    end = 0
    for a, b in st.need:
        if not end <= a < b <= offer.chunks:
            return (f"it asks for chunks [{a}, {b}): expected ordered, disjoint ranges within "
                    f"0..{offer.chunks}")
        end = b
    return None
