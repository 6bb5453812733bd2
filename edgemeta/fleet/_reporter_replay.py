"""The reporter's sending side: live or queued, live messages awaiting PUBACK, replay of the queue.

A message goes to paho at once only when the reporter is online with nothing queued; otherwise it
joins the queue behind older records, so order is kept. Live messages are remembered until their
PUBACK: when the link drops first they go back in the queue. The queue is replayed in batches of
:data:`REPLAY_BATCH`, each record acknowledged in the queue only after its PUBACK.

Every composed message takes one *route*, which :class:`~edgemeta.fleet.reporter.DeviceReporter`
reports per telemetry message through its ``on_telemetry`` hook:

* ``"live"``: handed to paho on a connected link with nothing queued;
* ``"offline"``: queued because the reporter was not online (no connection, or no birth yet);
* ``"behind"``: queued while online because older queued records go first;
* ``"requeued"``: a ``"live"`` message put back in the queue because the link (or the reporter)
  stopped before its PUBACK. Reported a second time, in addition to ``"live"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.errors import MessageError
from edgemeta.fleet._reporter_outbox import Outbox, decode_record, encode_record
from edgemeta.fleet.schema import Reply, Telemetry

__all__ = ["BEHIND", "BEHIND_KEY", "LIVE", "OFFLINE", "REPLAY_BATCH", "REQUEUED", "ROUTES",
           "Sender", "acknowledged"]

log = logging.getLogger("edgemeta.fleet.reporter")  # the reporter's messages, as before

LIVE = "live"
OFFLINE = "offline"
BEHIND = "behind"
REQUEUED = "requeued"
ROUTES = (LIVE, OFFLINE, BEHIND, REQUEUED)

# Spooled records sent per replay step before waiting for their PUBACKs: enough to keep the link
# busy, few enough that a disconnect mid-step re-sends little.
REPLAY_BATCH = 32
# Marks a queued record composed while online (route BEHIND): sent with ``replayed: false``. Only
# what was queued while the reporter was not online (or put back after a lost PUBACK) is a replay.
BEHIND_KEY = "_behind"
# A replay step whose PUBACKs do not all arrive in this time is sent again (de-duplicated).
_REPLAY_ACK_TIMEOUT_S = 30.0

Message = Telemetry | Reply
# Stamps session and the next seq on a message's fields and hands it to paho (lock held).
Publish = Callable[[str, dict[str, Any], bool], "tuple[Message, mqtt.MQTTMessageInfo]"]


def acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """True once the broker's PUBACK arrived.

    False, not an exception, for a message paho could not even send: published in the instant
    between paho closing the socket and the disconnect callback, it has ``rc`` NO_CONN, on which
    paho's ``is_published`` raises. Such a message is never sent by paho (the reconnect drops
    paho's leftovers), so it counts as not acknowledged and is queued again.
    """
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class Sender:
    """Live-or-queue decisions, the live messages awaiting PUBACK and the replay batches.

    Every method ending in ``_locked`` runs with ``lock`` (the reporter's wire lock) held.

    Args:
        outbox: The queue and its drop rule.
        lock: The reporter's lock ordering everything on the wire.
        publish: Stamps and publishes one message (called with the lock held).
        is_online: Whether a birth was published on the current connection (lock held).
        device_id: For log messages.
    """

    def __init__(self, outbox: Outbox, lock: threading.Lock, publish: Publish,
                 is_online: Callable[[], bool], device_id: str) -> None:
        self.outbox = outbox
        self._lock = lock
        self._publish = publish
        self._is_online = is_online
        self._device_id = device_id
        self._unacked_live: deque[tuple[mqtt.MQTTMessageInfo, bytes, Message]] = deque()
        self._batch: list[mqtt.MQTTMessageInfo | None] | None = None  # replay step in flight
        self.dropped = 0  # telemetry of this boot dropped from the full queue

    def emit_locked(self, kind: str, fields: dict[str, Any]
                    ) -> tuple[Message | None, mqtt.MQTTMessageInfo | None, str]:
        """Send live when online with nothing queued, else queue (order is kept).

        Returns:
            The stamped message and its paho info when sent live (else ``None, None``), and the
            route taken (:data:`LIVE`, :data:`OFFLINE` or :data:`BEHIND`).
        """
        while self._unacked_live and acknowledged(self._unacked_live[0][0]):
            self._unacked_live.popleft()  # PUBACKs arrive in order
        record = encode_record(kind, fields)
        online = self._is_online()
        if online and len(self.outbox.queue) == 0:
            msg, info = self._publish(kind, fields, False)
            self._unacked_live.append((info, record, msg))
            return msg, info, LIVE
        if online:
            # Composed while online, only waiting behind older records: fresh, so it is sent
            # with replayed: false and the monitor shows its metrics (see BEHIND_KEY).
            record = encode_record(kind, {**fields, BEHIND_KEY: True})
        self.dropped += self.outbox.append(record)
        return None, None, BEHIND if online else OFFLINE

    def drained_locked(self) -> bool:
        """True when nothing is queued and every live message has its PUBACK."""
        while self._unacked_live and acknowledged(self._unacked_live[0][0]):
            self._unacked_live.popleft()
        return not self._unacked_live and self._batch is None and len(self.outbox.queue) == 0

    def requeue_unacked_locked(self) -> list[Message]:
        """Queue the live messages without PUBACK again, in order; returns them.

        PUBACKs come in order, so once the link is gone what is unacknowledged was not delivered
        (or its delivery is unknown): it is re-sent with a fresh seq, de-duplicated by (boot, n).
        """
        requeued: list[Message] = []
        while self._unacked_live:
            info, record, msg = self._unacked_live.popleft()
            if not acknowledged(info):
                self.dropped += self.outbox.append(record)
                requeued.append(msg)
        return requeued

    # --- replay ---------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event, wake: threading.Event) -> None:
        """The replay thread: whenever woken (or every 0.5 s), replay batches while connected."""
        while not stop_event.is_set():
            wake.wait(0.5)
            wake.clear()
            try:
                while not stop_event.is_set() and self.replay_step(stop_event):
                    pass
            except Exception:  # noqa: BLE001 - e.g. a failing SD card: retry, never end
                log.exception("replay of %s failed; trying again", self._device_id)
                stop_event.wait(1.0)

    def replay_step(self, stop_event: threading.Event) -> bool:
        """Wait for the current replay batch (starting one if needed); True if more may follow."""
        with self._lock:
            if self._batch is None and not self.start_batch_locked():
                return False
            batch = self._batch
        assert batch is not None
        deadline = time.monotonic() + _REPLAY_ACK_TIMEOUT_S
        for info in batch:
            while info is not None and not acknowledged(info):
                if self._batch is not batch or stop_event.is_set() \
                        or time.monotonic() > deadline:
                    break
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(0.05)
                else:
                    time.sleep(0.05)
        with self._lock:
            if self._batch is not batch:
                return False  # the connection changed; on_disconnect settled it
            self.settle_batch_locked()
        return True

    def start_batch_locked(self) -> bool:
        """Publish the next batch from the queue; False if nothing can go."""
        if not self._is_online() or self.outbox.queue.waiting == 0:
            return False
        infos: list[mqtt.MQTTMessageInfo | None] = []
        for _, data in self.outbox.queue.peek(REPLAY_BATCH):
            try:
                kind, fields = decode_record(data)
                infos.append(self._publish(kind, fields, True)[1])
            except (MessageError, TypeError, ValueError) as exc:
                # Written by another edgemeta version, or damaged: not sendable, ever.
                log.warning("spooled record of %s not sendable (%s): discarded",
                            self._device_id, exc)
                infos.append(None)
        self._batch = infos
        return True

    def settle_batch_locked(self) -> None:
        """Acknowledge the batch's PUBACKed prefix, put the rest back in front."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        acked = 0
        for info in batch:
            if info is not None and not acknowledged(info):
                break
            acked += 1
        self.outbox.queue.ack(acked)
        if acked < len(batch):
            self.outbox.queue.release()  # re-sent with fresh seq (de-duplicated by (boot, n))
