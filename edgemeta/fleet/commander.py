"""Host side of remote commands: send a Command to one device and wait for its Reply.

A :class:`FleetCommander` holds one MQTT connection, subscribed to ``edgemeta/v1/+/+/reply``.
:meth:`FleetCommander.call` publishes a :class:`~edgemeta.fleet.schema.Command` with a fresh id
on ``edgemeta/v1/<fleet>/<device>/cmd`` (QoS 1, never retained: a retained ``enroll`` would run
again on every reconnect) and returns the device's :class:`~edgemeta.fleet.schema.Reply` with
the same id. Any number of threads may call at once; replies are matched by id and device.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError, InputError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._guard import guarded
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet.schema import (
    Command,
    Reply,
    decode,
    parse_topic,
    topic,
    topic_filter,
    validate_id,
)

__all__ = ["FleetCommander", "default_host_id", "encode_image", "encode_images"]

log = logging.getLogger(__name__)

# A reply the device could not correlate (it could not parse the command) carries this id.
INVALID_ID = "invalid"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def default_host_id() -> str:
    """This machine's name reduced to the id alphabet (``[A-Za-z0-9_.-]``, at most 64)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-")
    return name or "host"


@dataclass
class _Pending:
    """One call waiting for its reply."""

    fleet: str
    device: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None


class FleetCommander(StartStop):
    """Sends commands to devices and waits for their replies.

    Example::

        with FleetCommander("mqtt://127.0.0.1:1883") as cmd:
            reply = cmd.call("lab", "pi-01", "classify", {"images": encode_images(["q.png"])})
            print(reply.ok, reply.result or reply.error)

    Args:
        broker_url: ``mqtt://host[:port]``.
        host_id: Names the sender in every command (the device logs it); default: the hostname.
        connect_timeout_s: How long :meth:`start` waits for the broker and the subscription.

    Raises:
        FleetError: On a bad broker URL.
        MessageError: On a host id outside ``[A-Za-z0-9_.-]{1,64}``.
    """

    def __init__(self, broker_url: str, host_id: str | None = None, *,
                 connect_timeout_s: float = 10.0) -> None:
        _mqtt.parse_broker_url(broker_url)
        self._url = broker_url
        self.host_id = validate_id(host_id if host_id is not None else default_host_id(),
                                   "host id")
        self._connect_timeout_s = float(connect_timeout_s)
        self._filter = topic_filter(kind="reply")
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._waiter = _mqtt.ConnectWaiter()
        self._subscribed = threading.Event()
        self._started = False
        self.ignored = 0  # replies that matched no waiting call (late, foreign or malformed)
        # Random suffix: two commanders of one host must not push each other off the broker.
        self._client = _mqtt.new_client(f"edgemeta-cmd-{self.host_id}-{secrets.token_hex(4)}")
        # Guarded: an exception escaping a paho callback would end the network thread.
        self._client.on_connect = guarded(self._on_connect, "commander on_connect")
        self._client.on_subscribe = guarded(self._on_subscribe, "commander on_subscribe")
        self._client.on_message = guarded(self._on_message, "commander on_message")

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe to replies; returns once the broker acknowledged both.

        Raises:
            FleetError: If the broker cannot be reached or does not acknowledge the subscription
                within the connect timeout.
        """
        if self._started:
            return
        # A reply published before the SUBACK would be lost: never send before it.
        _mqtt.connect_subscribed(self._client, self._url, 30, self._connect_timeout_s,
                                 self._waiter, self._subscribed,
                                 f"the subscription to {self._filter}")
        self._started = True

    def stop(self) -> None:
        """Disconnect; calls still waiting time out. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

    # --- commands -------------------------------------------------------------------------------

    def call(self, fleet: str, device: str, command: str, args: dict[str, Any] | None = None,
             timeout_s: float = 10.0) -> Reply:
        """Send one command and wait for the device's reply.

        Args:
            fleet: Fleet id of the device.
            device: Device id.
            command: One of :data:`~edgemeta.fleet.schema.COMMANDS`.
            args: The command's arguments (see docs/telemetry.md, "Commands"); ``{}`` if None.
            timeout_s: Longest wait for the broker's PUBACK and the reply together.

        Returns:
            The :class:`Reply`; check ``reply.ok`` (a refused command has ``ok`` false and an
            ``error`` saying why, and changed nothing on the device).

        Raises:
            FleetError: Not started, the broker did not take the command, or no reply arrived
                within ``timeout_s`` (the device may still carry the command out).
            MessageError: Bad ids, an unknown command, or a command over 1 MiB.
        """
        if not self._started:
            raise FleetError("commander is not started: call start() or use it as a context "
                             "manager before call()")
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise FleetError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        cmd = Command(id=uuid.uuid4().hex[:16], command=command,
                      args=dict(args) if args is not None else {}, ts=time.time(),
                      host_id=self.host_id)
        payload = cmd.to_payload()  # MessageError (over 1 MiB) before anything is sent
        where = topic(fleet, device, "cmd")
        deadline = time.monotonic() + float(timeout_s)
        pending = _Pending(fleet, device)
        with self._lock:  # registered before publishing: a fast reply must find its waiter
            self._pending[cmd.id] = pending
        try:
            info = self._client.publish(where, payload, qos=1, retain=False)
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise FleetError(f"{command} to {fleet}/{device} not sent: {exc}") from None
            if not info.is_published():
                raise FleetError(f"{command} to {fleet}/{device} not acknowledged by the broker "
                                 f"at {_mqtt.redact_url(self._url)} within {timeout_s:g} s")
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                raise FleetError(
                    f"no reply from {fleet}/{device} to {command} (id {cmd.id}) within "
                    f"{timeout_s:g} s: expected its agent to be running and connected to "
                    f"{_mqtt.redact_url(self._url)}; it may still carry the command out")
        finally:
            with self._lock:
                self._pending.pop(cmd.id, None)
        assert pending.reply is not None  # set before done is
        return pending.reply

    # --- replies --------------------------------------------------------------------------------

    def handle(self, topic_name: str, payload: bytes | bytearray) -> bool:
        """Hand one reply message to the call waiting for it; never raises.

        Returns:
            True if a waiting call took it.
        """
        try:
            parts = parse_topic(topic_name)
            reply = decode(parts.kind, payload)
            if not isinstance(reply, Reply):
                raise MessageError(f"{parts.kind} on the reply subscription: expected a reply")
            if (reply.fleet, reply.device_id) != (parts.fleet, parts.device_id):
                raise MessageError(f"reply names {reply.fleet}/{reply.device_id} but came on "
                                   f"{topic_name}: expected them to match")
        except Exception as exc:  # noqa: BLE001 - e.g. RecursionError from nested JSON
            log.warning("ignoring malformed reply on %r: %s", topic_name,
                        exc if isinstance(exc, MessageError) else repr(exc))
            with self._lock:
                self.ignored += 1
            return False
        with self._lock:
            pending = self._match(reply)
            if pending is not None:
                pending.reply = reply
                pending.done.set()
                return True
            self.ignored += 1
        log.debug("ignoring reply %s from %s/%s: no call is waiting for it", reply.id,
                  reply.fleet, reply.device_id)
        return False

    def _match(self, reply: Reply) -> _Pending | None:
        # Called with self._lock held.
        pending = self._pending.get(reply.id)
        if pending is not None and not pending.done.is_set():
            # Only the device the command went to may answer it.
            same = (pending.fleet, pending.device) == (reply.fleet, reply.device_id)
            return pending if same else None
        if reply.id == INVALID_ID:
            # The device could not parse a command; that is ours only if exactly one call waits
            # on that device, otherwise it cannot be told apart and the calls time out.
            waiting = [p for p in self._pending.values() if not p.done.is_set()
                       and (p.fleet, p.device) == (reply.fleet, reply.device_id)]
            return waiting[0] if len(waiting) == 1 else None
        return None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if not reason_code.is_failure:
            _no_delay(client)
            client.subscribe(self._filter, qos=1)  # clean sessions forget subscriptions
        self._waiter.on_connect(reason_code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()
        else:
            log.error("broker refused the subscription to %s: %s", self._filter, reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, message.payload)


def _no_delay(client: mqtt.Client) -> None:
    """Turn off Nagle's algorithm on the client's socket.

    A command is a small request answered by a small reply: with Nagle's algorithm and the
    peer's delayed ACK each small write can wait ~40 ms (measured: 88 ms per call on loopback
    mosquitto, 0.5 ms with TCP_NODELAY here and ``set_tcp_nodelay true`` in the broker).
    """
    sock = client.socket()
    if sock is None:
        return
    if not isinstance(sock, socket.socket):  # e.g. paho's websocket wrapper: keep going
        log.debug("could not set TCP_NODELAY on the commander's %s", type(sock).__name__)
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (e.g. a Unix socket): keep going
        log.debug("could not set TCP_NODELAY on the commander's socket", exc_info=True)


# --- image arguments ------------------------------------------------------------------------------


def encode_image(image: str | os.PathLike[str] | bytes | Any) -> str:
    """One image as the base64 text an ``enroll``/``classify`` command carries.

    PNG and JPEG files (or bytes) are sent unchanged; any other image Pillow reads (BMP, PGM, ...)
    and uint8 numpy arrays are re-encoded as PNG, because the device accepts only PNG and JPEG.

    Raises:
        InputError: Missing or unreadable file, or an image over the device's per-image limit.
    """
    from edgemeta.agent.commands import MAX_IMAGE_BYTES

    if isinstance(image, (bytes, bytearray)):
        data, name = bytes(image), "image bytes"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file {path} does not exist: expected a PNG/JPEG file")
        data, name = path.read_bytes(), str(path)
    else:
        data, name = _png_of_array(image), "image array"
    if not data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        data = _reencode_png(data, name)
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{name} is {len(data)} bytes: the device accepts at most "
                         f"{MAX_IMAGE_BYTES} per image (resize or compress it)")
    return base64.b64encode(data).decode("ascii")


def encode_images(images: Iterable[str | os.PathLike[str] | bytes | Any]) -> list[str]:
    """Several images for the ``images`` argument; checks the device's per-command count.

    Raises:
        InputError: No images, more than the device accepts per command, or a bad image.
    """
    from edgemeta.agent.commands import MAX_IMAGES

    items: Sequence[Any] = list(images)
    if not 1 <= len(items) <= MAX_IMAGES:
        raise InputError(f"{len(items)} images given: a command carries 1 to {MAX_IMAGES}; "
                         "send several commands for more")
    return [encode_image(x) for x in items]


def _reencode_png(data: bytes, name: str) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            buf = io.BytesIO()
            img.save(buf, "PNG")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise InputError(f"{name} is not a readable image ({exc}): expected PNG/JPEG/BMP") \
            from None
    return buf.getvalue()


def _png_of_array(image: Any) -> bytes:
    import numpy as np
    from PIL import Image

    from edgemeta.runtime.preprocess import to_uint8_image

    if not isinstance(image, np.ndarray):
        raise InputError(f"an image must be a path, PNG/JPEG bytes or a uint8 array, got "
                         f"{type(image).__name__}")
    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image)).save(buf, "PNG")
    return buf.getvalue()
