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
from collections.abc import Callable
from typing import Any

from edgemeta.errors import MessageError
from edgemeta.fleet.schema import Command, decode, validate_id

__all__ = ["CommandHandler", "CommandWorker", "command_id_of"]

log = logging.getLogger(__name__)

# What the agent provides: (ok, result, error) for one command; see DeviceReporter.
CommandHandler = Callable[[Command], "tuple[bool, dict[str, Any] | None, str | None]"]
Reply = Callable[[str, bool, "dict[str, Any] | None", "str | None"], None]

MAX_PENDING = 16
_STOP = object()


def command_id_of(payload: bytes) -> str:
    """The ``id`` of a command payload if it has a valid one, else ``"invalid"``."""
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
        return validate_id(obj.get("id"), "command id") if isinstance(obj, dict) else "invalid"
    except (ValueError, MessageError):
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

    def submit(self, payload: bytes) -> None:
        """Queue a raw command payload; answers ``ok: false`` at once when the queue is full."""
        try:
            self._queue.put_nowait(bytes(payload))
        except queue.Full:
            self._safe_reply(command_id_of(payload), False, None,
                             f"device busy: {self._queue.maxsize} commands already waiting; "
                             "expected the sender to wait for replies before sending more")

    def stop(self, timeout_s: float) -> None:
        """Let the running command finish (bounded by ``timeout_s``) and end the thread."""
        if not self._started:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass  # the daemon thread dies with the process
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, bytes)
            self.handle(item)

    def handle(self, payload: bytes) -> None:
        """Decode, dispatch and reply to one command; never raises."""
        try:
            cmd = decode("cmd", payload)
        except MessageError as exc:
            # A refused command changes nothing; the reply says why.
            self._safe_reply(command_id_of(payload), False, None, str(exc))
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
