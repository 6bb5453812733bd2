"""Device side of ``cmd``/``reply``: decode commands and run them off paho's network thread.

paho delivers messages on its network thread; a command handler that classifies an image or
enrolls a class takes far longer than a keepalive, so commands go through a small bounded queue to
one worker thread. A full queue is answered at once with ``ok: false`` instead of growing memory.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgemeta.errors import MessageError
from edgemeta.fleet.schema import Command, Reply as ReplyMessage, decode, validate_id

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edgemeta.fleet._reporter_replay import Sender
    from edgemeta.fleet.schema import Birth, Telemetry

__all__ = ["CommandEvents", "CommandHandler", "CommandWorker", "command_id_of"]

log = logging.getLogger(__name__)

# What the agent provides: (ok, result, error) for one command; see DeviceReporter.
CommandHandler = Callable[[Command], "tuple[bool, dict[str, Any] | None, str | None]"]
Reply = Callable[[str, bool, "dict[str, Any] | None", "str | None"], None]

MAX_PENDING = 16
_STOP = object()


def command_id_of(payload: bytes | bytearray) -> str:
    """The ``id`` of a command payload if it has a valid one, else ``"invalid"``."""
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
        return validate_id(obj.get("id"), "command id") if isinstance(obj, dict) else "invalid"
    except Exception:  # noqa: BLE001 - RecursionError, ValueError, MessageError...: paho's thread
        return "invalid"


class CommandWorker:
    """Runs ``dispatch`` for each submitted command payload, in order, on one daemon thread.

    Args:
        dispatch: Carries out a decoded command; returns ``(ok, result, error)``.
        reply: Sends the reply ``(id, ok, result, error)``.
        name: Thread name.
        max_pending: Commands waiting beyond the one running; more are refused as busy.
    """

    def __init__(self, dispatch: CommandHandler, reply: Reply, name: str,
                 max_pending: int = MAX_PENDING) -> None:
        self._dispatch = dispatch
        self._reply = reply
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the worker thread (once)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, payload: bytes | bytearray) -> None:
        """Queue a raw command payload; answers ``ok: false`` at once when the queue is full."""
        try:
            self._queue.put_nowait(bytes(payload))
        except queue.Full:
            self._safe_reply(command_id_of(payload), False, None,
                             f"device busy: {self._queue.maxsize} commands already waiting; "
                             "expected the sender to wait for replies before sending more")

    def stop(self, timeout_s: float) -> None:
        """Let the running command finish and end the thread, within ``timeout_s`` in all."""
        if not self._started:
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout_s))
        except queue.Full:
            pass  # the daemon thread dies with the process
        self._thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                if not isinstance(item, bytes):  # only submit() and stop() put items
                    raise TypeError(f"queued {type(item).__name__}: expected a bytes payload")
                self.handle(item)
            except Exception:  # noqa: BLE001 - the worker must outlive any one command
                log.exception("command worker: unexpected error; going on with the next command")

    def handle(self, payload: bytes) -> None:
        """Decode, dispatch and reply to one command; never raises."""
        try:
            cmd = decode("cmd", payload)
        except Exception as exc:  # noqa: BLE001 - MessageError, or a bug: answer, never die
            # A refused command changes nothing; the reply says why.
            text = str(exc) if isinstance(exc, MessageError) else f"command not readable: {exc!r}"
            self._safe_reply(command_id_of(payload), False, None, text)
            return
        assert isinstance(cmd, Command)
        try:
            outcome = self._dispatch(cmd)
            ok, result, error = outcome
            if not isinstance(ok, bool) or not (result is None or isinstance(result, dict)) \
                    or not (error is None or isinstance(error, str)):
                raise TypeError(f"handler returned {outcome!r}: expected "
                                "(bool, dict | None, str | None)")
        except Exception as exc:  # noqa: BLE001 - agent code must not kill the worker
            log.exception("command %s (%s) failed", cmd.id, cmd.command)
            ok, result, error = False, None, f"{cmd.command} failed on the device: {exc}"
        self._safe_reply(cmd.id, ok, result, error)

    def _safe_reply(self, cid: str, ok: bool, result: dict[str, Any] | None,
                    error: str | None) -> None:
        try:
            self._reply(cid, ok, result, error)
        except Exception:  # noqa: BLE001 - e.g. an unsendable result; logged, worker goes on
            log.exception("reply to command %s not sent", cid)


class CommandEvents:
    """The reporter's side of commands: run ``rebirth``/``report``, queue replies (a mixin)."""

    # State and methods of DeviceReporter.
    _lock: threading.Lock
    _sender: Sender
    _wake: threading.Event
    _device_id: str
    _fleet: str
    _handler: CommandHandler | None

    if TYPE_CHECKING:  # methods of DeviceReporter
        def publish_birth(self, timeout_s: float = 5.0) -> Birth: ...

        def _emit_telemetry(self) -> tuple[Telemetry, mqtt.MQTTMessageInfo | None]: ...

    def _send_reply(self, cid: str, ok: bool, result: dict[str, Any] | None,
                    error: str | None) -> None:
        try:
            reply = ReplyMessage(cid, self._device_id, self._fleet, 0, 0, time.time(), ok, result,
                                 error)
            reply.to_payload()  # size and JSON checks before it can reach the queue
        except (MessageError, TypeError, ValueError, RecursionError) as exc:
            reply = ReplyMessage(cid, self._device_id, self._fleet, 0, 0, time.time(), False,
                                 None, f"the result could not be sent: {exc}")
        with self._lock:
            _, info, _ = self._sender.emit_locked("reply", reply.to_dict())
        if info is None:
            self._wake.set()

    def _dispatch(self, cmd: Command) -> tuple[bool, dict[str, Any] | None, str | None]:
        """Run one command on the worker thread (rebirth/report here, the rest by the agent)."""
        if cmd.command == "rebirth":
            birth = self.publish_birth()
            return True, {"bd_seq": birth.bd_seq, "session": birth.session}, None
        if cmd.command == "report":
            msg, _ = self._emit_telemetry()
            return True, {"n": msg.n}, None
        if self._handler is None:
            return False, None, f"this device does not accept {cmd.command}"
        return self._handler(cmd)
