"""The reporter's side of the connection: paho's callbacks, the Will, the monitors' host state.

Every (re)connect drops paho's leftovers, subscribes to commands and host states and (at once, or
once a monitor says ``online``) publishes the birth followed by the first replay step. Every
disconnect puts live messages without PUBACK back in the queue, and gives the next connection a
larger session, the next ``bd_seq`` and its own Last Will. Mixed into
:class:`~edgemeta.fleet.reporter.DeviceReporter`, whose state these methods share.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import paho.mqtt.client as mqtt

from edgemeta.errors import MessageError
from edgemeta.fleet.schema import HOST_ROOT, Death, decode_host_state

if TYPE_CHECKING:
    from edgemeta.fleet import _mqtt
    from edgemeta.fleet._reporter_commands import CommandWorker
    from edgemeta.fleet._reporter_replay import Sender
    from edgemeta.fleet._reporter_session import SessionClock
    from edgemeta.fleet._reporter_status import DeviceStatus, StatusSource
    from edgemeta.fleet.schema import Birth, Reply, Telemetry

__all__ = ["LinkEvents", "never_raises"]

# More monitors than this announcing themselves at once is abuse, not a deployment.
MAX_HOSTS = 64

log = logging.getLogger("edgemeta.fleet.reporter")

P = ParamSpec("P")
R = TypeVar("R")


def never_raises(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Log and swallow any exception: paho 2.x lets a callback's exception end its network
    thread (no more keepalives, reconnects or PUBACKs), so no callback may raise."""
    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - keep paho's thread alive whatever happened
            log.exception("reporter: %s failed; the connection goes on", fn.__name__)
            return None
    return guarded


class LinkEvents:
    """paho callbacks and host-state tracking of :class:`DeviceReporter` (a mixin)."""

    # State owned by DeviceReporter (see its __init__).
    _lock: threading.Lock
    _session_lock: threading.Lock
    _clock: SessionClock
    _client: mqtt.Client
    _waiter: _mqtt.ConnectWaiter
    _sender: Sender
    _commands: CommandWorker
    _status: StatusSource
    _hosts: dict[str, bool]
    _wake: threading.Event
    _device_id: str
    _fleet: str
    _session: int
    _bd_seq: int
    _online: bool
    _births: int
    _state: str
    _wait_for_monitor: bool
    _birth_info: mqtt.MQTTMessageInfo | None

    if TYPE_CHECKING:  # methods of DeviceReporter
        def _topic(self, kind: str) -> str: ...

        def _publish_birth_locked(self, st: DeviceStatus
                                  ) -> tuple[Birth, mqtt.MQTTMessageInfo]: ...

        def _emit_telemetry(self) -> tuple[Telemetry, mqtt.MQTTMessageInfo | None]: ...

        def _tell_requeued(self, requeued: list[Telemetry | Reply]) -> None: ...

    def _set_will(self) -> None:
        # paho sends the Will with the next CONNECT, so this must run before each (re)connect.
        will = Death(self._device_id, self._fleet, self._session, ts=None, reason="lost",
                     bd_seq=self._bd_seq)
        self._client.will_set(self._topic("death"), will.to_payload(), qos=1, retain=True)

    # --- paho callbacks (network thread) --------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        try:
            self._connected(client, reason_code)
        except Exception:  # noqa: BLE001 - paho's thread must survive; the waiter still hears
            log.exception("reporter %s: handling the connection failed", self._device_id)
        self._waiter.on_connect(reason_code)

    def _connected(self, client: mqtt.Client, reason_code: Any) -> None:
        if not reason_code.is_failure:
            # paho would re-send the previous connection's unacknowledged messages with their old
            # session and seq; they were put back in our queue and get fresh ones instead.
            client.drop_out_messages()
            with self._lock:
                self._hosts.clear()  # a new broker may have other (or no) retained host states
            client.subscribe([(self._topic("cmd"), 1), (f"{HOST_ROOT}/+", 1)])
            if not self._wait_for_monitor:
                self._go_online()
            else:
                # Sparkplug-style, the birth waits for a retained "online" host state; said in
                # the log so that a board waiting for a monitor does not look stuck.
                log.info("reporter %s connected; the birth waits for a monitor's host state "
                         "(wait_for_monitor)", self._device_id)

    def _go_online(self) -> None:
        """Birth, then the first replay step, then live (paho's thread, once per connection)."""
        st = self._status.read()
        with self._lock:
            if self._online or not self._client.is_connected():
                return
            try:
                # Published without waiting: waiting here would block the loop that has to
                # read the PUBACK.
                _, self._birth_info = self._publish_birth_locked(st)
            except MessageError:
                log.warning("birth of %s not sent: status has invalid values",
                            self._device_id, exc_info=True)
            self._online = True
            reconnect = self._births > 0  # the first connection's telemetry is the timer's
            self._births += 1
            # The first replay step goes out right behind the birth, before any other thread
            # can queue more: a full spool then has room and drops nothing new.
            self._sender.start_batch_locked()
        if reconnect:
            try:
                self._emit_telemetry()  # queued behind any replay: fresh metrics come last
            except MessageError:
                log.warning("telemetry of %s not sent: status has invalid values",
                            self._device_id, exc_info=True)
        self._wake.set()

    @never_raises
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        with self._lock:
            if self._state != "started":
                return  # our own stop(), or a failed first connect
            was_online = self._online
            self._online = False
            self._sender.settle_batch_locked()
            # Live messages without PUBACK go back in the queue, in order, ahead of anything
            # queued later; the reconnect re-sends them with fresh seq.
            requeued = self._sender.requeue_unacked_locked()
            # The broker may already have published this connection's Will ("lost", session S).
            # The next connection gets a larger session, the next bd_seq and its own Will.
            with self._session_lock:
                if was_online:
                    # max(now, last + 1), kept in the state file across restarts too.
                    self._session = self._clock.next(self._session + 1)
                    self._bd_seq = (self._bd_seq + 1) % 256
                    self._set_will()
                session = self._session
        self._tell_requeued(requeued)
        if was_online:
            log.warning("reporter %s lost its broker connection (%s); queueing telemetry and "
                        "reconnecting as session %d", self._device_id, reason_code, session)

    @never_raises
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._topic("cmd"):
            if message.retain:
                # A retained command would be carried out again on every reconnect (and by
                # a replaced board): commands are one-shot, so it is ignored.
                log.warning("reporter %s: ignoring a retained command on %s (%d bytes); "
                            "commands must be published without the retain flag",
                            self._device_id, message.topic, len(message.payload))
                return
            self._commands.submit(message.payload)
            return
        if message.topic.startswith(HOST_ROOT + "/"):
            self._on_host_state(message.topic, message.payload)

    def _on_host_state(self, topic_name: str, payload: bytes | bytearray) -> None:
        if not payload:
            with self._lock:  # a cleared retained message: that host is gone
                self._hosts.pop(topic_name[len(HOST_ROOT) + 1:], None)
            return
        try:
            state = decode_host_state(topic_name, payload)
        except MessageError as exc:
            log.warning("ignoring host state on %s: %s", topic_name, exc)
            return
        with self._lock:
            before = any(self._hosts.values())
            if state.online:
                self._hosts[state.host_id] = True
            else:
                # Only online hosts matter; forgetting offline ones keeps the table bounded by
                # the monitors actually running, however many have come and gone.
                self._hosts.pop(state.host_id, None)
            while len(self._hosts) > MAX_HOSTS:
                self._hosts.pop(next(iter(self._hosts)))
            after = any(self._hosts.values())
        if after and self._wait_for_monitor:
            self._go_online()
        if before != after:
            log.warning("%s: %s", self._device_id, "a monitor is listening" if after
                        else "no monitor is listening (telemetry is still published)")

