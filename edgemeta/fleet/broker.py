"""Start a local MQTT broker: mosquitto as a subprocess, or amqtt embedded in a thread.

Both listen on loopback by default and allow anonymous clients: they are meant for a workstation,
a demo or tests, not for exposing a fleet to a network. mosquitto can also be started with a TLS
listener, a password file and an ACL (:class:`MosquittoSecurity`), which is how the security tests
run; ``deploy/mosquitto/`` shows the same settings for a real broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgemeta._deps import require
from edgemeta.errors import FleetError
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet.broker_security import MosquittoSecurity

__all__ = ["Broker", "EmbeddedBroker", "MosquittoBroker", "MosquittoSecurity", "find_mosquitto",
           "free_port", "start_broker"]

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3  # free_port() can race with another process; retry with a new port


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, looking in PATH and then /usr/sbin, /usr/local/sbin."""
    found = shutil.which("mosquitto")
    if found:
        return found
    # Debian installs it in /usr/sbin, which is not in a normal user's PATH.
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.25):
            return True
    except OSError:
        return False


class Broker(StartStop):
    """A running local broker. Use :func:`start_broker` to create one.

    Attributes:
        kind: ``"mosquitto"`` or ``"embedded"``.
        host: Address it listens on.
        port: TCP port.
    """

    kind: str = ""
    tls: bool = False  # True when the listener speaks TLS (mosquitto with MosquittoSecurity)

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._stopped = False

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` (``mqtts://`` for TLS) to give to reporters and monitors.

        For TLS and passwords, clients add ``USER@`` and ``?ca=...`` themselves (docs/telemetry.md,
        "Security"): the broker does not know which CA or user a client should use.
        """
        # A wildcard bind is reachable on loopback; clients cannot connect to 0.0.0.0 itself.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True until :meth:`stop` was called."""
        return not self._stopped

    def stop(self) -> None:
        """Stop the broker and release its resources. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._shutdown()

    def _shutdown(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


class MosquittoBroker(Broker):
    """mosquitto in the foreground as a child process, with its own config in a temp dir."""

    kind = "mosquitto"

    def __init__(self, host: str, port: int, workdir: Path | None = None,
                 security: MosquittoSecurity | None = None, *,
                 max_queued_messages: int | None = None) -> None:
        super().__init__(host, port)
        # max_queued_messages: QoS 1/2 messages mosquitto holds per client beyond the 20 in
        # flight (its default 1,000; 0 = no limit). A subscriber that falls further behind loses
        # the excess, so benchmarks/fleet_scale.py can raise it to tell a monitor that is slow
        # on average from one that only hiccups.
        if max_queued_messages is not None and (
                isinstance(max_queued_messages, bool) or not isinstance(max_queued_messages, int)
                or max_queued_messages < 0):
            raise FleetError(f"max_queued_messages must be an integer >= 0 or None, got "
                             f"{max_queued_messages!r}")
        # Checked before the temp dir exists, so a bad setting leaves nothing behind.
        secure = security.config_lines() if security is not None else ["allow_anonymous true"]
        self.tls = security is not None and security.tls
        exe = find_mosquitto()
        if exe is None:
            raise FleetError(
                "mosquitto executable not found in PATH, /usr/sbin or /usr/local/sbin: install it "
                "(apt-get install mosquitto) or use start_broker('embedded')"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="edgemeta-mosquitto-", dir=workdir))
        if any(c.isspace() for c in str(self.dir)):
            shutil.rmtree(self.dir, ignore_errors=True)
            raise FleetError(f"mosquitto work dir {self.dir} contains whitespace: expected a "
                             "path without spaces (mosquitto's config format cannot quote it)")
        self.log_path = self.dir / "mosquitto.log"
        self._stdout_path = self.dir / "stdout.log"
        config = [
            f"listener {port} {host}",
            *secure,
            "persistence false",
            # Small messages (commands, replies) otherwise wait ~40 ms per hop for Nagle's
            # algorithm and delayed ACKs: measured 44 ms vs 0.5 ms command round trips.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if max_queued_messages is not None:
            config.append(f"max_queued_messages {max_queued_messages}")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which cannot write the log in
            # our root-owned temp dir; staying root is acceptable for a loopback-only test broker.
            config.append("user root")
        conf_path = self.dir / "mosquitto.conf"
        conf_path.write_text("\n".join(config) + "\n")
        with open(self._stdout_path, "wb") as out:
            self._proc = subprocess.Popen(
                [exe, "-c", str(conf_path)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._stopped = True
            self._shutdown()
            raise

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of mosquitto's log and stdout/stderr, for error messages."""
        chunks = []
        for path in (self.log_path, self._stdout_path):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                chunks.extend(text.splitlines()[-lines:])
        return "\n".join(chunks) or "(mosquitto wrote no log)"

    def _log_says_running(self) -> bool:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return any(line.rstrip().endswith(" running") for line in text.splitlines())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FleetError(
                    f"mosquitto exited with code {self._proc.returncode} instead of listening on "
                    f"{self.host}:{self.port}; log tail:\n{self.log_tail()}"
                )
            # The port alone is not proof: another process may hold it. mosquitto logs
            # "... running" only after all its listeners are bound.
            if self._log_says_running() and _port_open(self.host, self.port):
                return
            time.sleep(0.05)
        raise FleetError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{_READY_TIMEOUT_S:g} s; log tail:\n{self.log_tail()}"
        )

    def _shutdown(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto on port %d ignored SIGTERM; killing it", self.port)
                self._proc.kill()
                self._proc.wait(_STOP_TIMEOUT_S)
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedBroker(Broker):
    """amqtt (pure Python, MQTT 3.1.1 only) running on its own asyncio loop in a daemon thread."""

    kind = "embedded"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._amqtt = require("amqtt.broker", "the embedded broker")
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"edgemeta-amqtt-{port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT_S):
            self._stopped = True
            self._shutdown()
            raise FleetError(f"embedded broker did not start on {host}:{port} within "
                             f"{_READY_TIMEOUT_S:g} s")
        if self._error is not None:
            self._stopped = True
            self._thread.join(_STOP_TIMEOUT_S)
            raise FleetError(
                f"embedded broker could not listen on {host}:{port}: {self._error}"
            ) from self._error

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: leaving out amqtt's default BrokerSysPlugin avoids $SYS
            # publications, and its packet/event logger plugins avoid log spam.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("embedded broker on port %d crashed", self.port)
        finally:
            # Cancel whatever amqtt left running (client handlers) so closing the loop is quiet.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _main(self) -> None:
        broker = self._amqtt.Broker(self._config())
        self._stop_event = asyncio.Event()
        await broker.start()
        self._ready.set()
        await self._stop_event.wait()
        try:
            await asyncio.wait_for(broker.shutdown(), _STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - stopping anyway; the loop is torn down next
            log.warning("embedded broker on port %d did not shut down cleanly", self.port,
                        exc_info=True)

    def _shutdown(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # loop closed between the check and the call: already down
        self._thread.join(_STOP_TIMEOUT_S * 2)
        if self._thread.is_alive():
            log.warning("embedded broker thread on port %d did not exit in time", self.port)


def start_broker(
    kind: str = "auto",
    host: str = "127.0.0.1",
    port: int | None = None,
    workdir: Path | None = None,
    *,
    security: MosquittoSecurity | None = None,
) -> Broker:
    """Start a local MQTT broker and wait until it accepts connections.

    Args:
        kind: ``"mosquitto"``, ``"embedded"`` (amqtt, needs ``edgemeta[host]``) or ``"auto"``
            (mosquitto when installed, else embedded).
        host: Address to listen on; loopback by default.
        port: TCP port; a free one when None.
        workdir: Parent of mosquitto's temp dir (config and log); the system temp dir by default.
        security: TLS listener, password file and ACL (mosquitto only; ``kind="auto"`` then
            requires mosquitto). None: plain MQTT, anonymous clients allowed.

    Returns:
        The running :class:`Broker`; stop it with ``stop()`` or a ``with`` block.

    Raises:
        FleetError: Unknown kind, mosquitto missing, or the broker did not come up (the message
            includes mosquitto's log tail).
        MissingDependencyError: ``kind="embedded"`` without amqtt installed.
    """
    if kind not in ("auto", "mosquitto", "embedded"):
        raise FleetError(f"unknown broker kind {kind!r}: expected 'auto', 'mosquitto' or "
                         "'embedded'")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise FleetError(f"port must be an integer in 1..65535 or None, got {port!r}")
    if security is not None and not isinstance(security, MosquittoSecurity):
        raise FleetError(f"security must be a MosquittoSecurity or None, got {security!r}")
    if kind == "auto":
        kind = "mosquitto" if find_mosquitto() or security is not None else "embedded"
    if security is not None and kind != "mosquitto":
        raise FleetError(f"security settings need kind='mosquitto', got kind={kind!r}: the "
                         "embedded broker only serves anonymous plain MQTT")
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    last: FleetError | None = None
    for _ in range(attempts):
        p = port if port is not None else free_port(host)
        try:
            if kind == "mosquitto":
                return MosquittoBroker(host, p, workdir, security)
            return EmbeddedBroker(host, p)
        except FleetError as exc:
            last = exc
            # Only a lost race for a free port is worth another try; anything else is final.
            if port is not None or "already in use" not in str(exc).lower():
                raise
    assert last is not None
    raise last
