"""paho-mqtt plumbing shared by the reporter, the monitor, the OTA sender/board and the agent.

URL parsing lives in :mod:`edgemeta.fleet._broker_url`; this module turns a parsed URL into a
configured paho client (TLS context, user name and password) and waits for the CONNACK, turning
TLS and authentication failures into :class:`FleetError` messages that say what to check.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError
from edgemeta.fleet._broker_url import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    PASSWORD_ENV,
    BrokerAddress,
    is_loopback,
    parse_broker_url,
    redact_url,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "PASSWORD_ENV",
    "BrokerAddress",
    "ConnectWaiter",
    "configure",
    "connect",
    "new_client",
    "parse_broker_url",
    "tls_context",
    "wait_acked",
]

log = logging.getLogger("edgemeta.fleet.reporter")

# MQTT 3.1.1 CONNACK 4/5 and their MQTT 5 counterparts 134/135: the broker did not accept who we
# claimed to be, as opposed to being unavailable.
_AUTH_REFUSALS = {4, 5, 134, 135}
# Marks a client whose TLS context is set: paho refuses a second tls_set_context(), and a caller
# may retry connect() on the same client after a failure.
_TLS_DONE = "_edgemeta_tls_configured"


def new_client(client_id: str) -> mqtt.Client:
    """Create a paho client speaking MQTT 3.1.1 (the embedded amqtt broker knows no MQTT 5)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    # Reconnect quickly after a broker restart, but do not hammer it.
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class ConnectWaiter:
    """Records CONNACK outcomes so a caller can wait for the first connection with a timeout."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.failure: str | None = None
        self.refused_code: int | None = None  # CONNACK code of the last refusal
        self.closed_early = 0  # connections the broker closed before any CONNACK
        self._failed = threading.Event()

    def on_connect(self, reason_code: Any) -> bool:
        """Record a CONNACK; returns True when the connection was accepted."""
        if reason_code.is_failure:
            self.failure = f"broker refused the connection: {reason_code}"
            self.refused_code = int(getattr(reason_code, "value", -1))
            self._failed.set()
            return False
        self.connected.set()
        return True

    def on_disconnect(self) -> None:
        """Record a connection that ended; only those before the first CONNACK are counted."""
        if not self.connected.is_set() and not self._failed.is_set():
            self.closed_early += 1

    def wait(self, timeout_s: float) -> bool:
        """Wait (bounded) for a successful CONNACK; False on refusal or timeout."""
        step = 0.05
        waited = 0.0
        while waited < timeout_s:
            if self.connected.wait(step):
                return True
            if self._failed.is_set():
                return False
            waited += step
        return self.connected.is_set()


def tls_context(addr: BrokerAddress, url: str) -> ssl.SSLContext:
    """A client TLS context for ``addr``: verifies the broker's chain and host name, TLS >= 1.2.

    Raises:
        FleetError: The CA file is not PEM, or the client certificate/key cannot be loaded.
    """
    shown = redact_url(url)
    try:
        # create_default_context sets CERT_REQUIRED and check_hostname: there is no switch here
        # to turn either off, on purpose.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=addr.ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise FleetError(f"cannot load CA file {addr.ca!r} from broker URL {shown} ({exc}): "
                         "expected a PEM file with the CA certificate that signed the broker's "
                         "certificate") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if addr.cert is not None:
        try:
            # An encrypted key would make OpenSSL prompt on the terminal; an empty password
            # makes it fail instead, which a headless board needs.
            ctx.load_cert_chain(addr.cert, addr.key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise FleetError(
                f"cannot load client certificate {addr.cert!r} / key {addr.key!r} from broker URL "
                f"{shown} ({exc}): expected PEM files, an unencrypted key that matches the "
                "certificate (or a cert= file that contains both)") from None
    return ctx


def configure(client: mqtt.Client, addr: BrokerAddress, url: str) -> None:
    """Apply TLS and credentials to ``client`` before it connects; safe to call again.

    :func:`connect` calls it; code that connects on its own (``connect_async``) calls it first.

    Raises:
        FleetError: The CA file or the client certificate/key cannot be loaded, or a password
            would go over plain MQTT to a host other than this machine.
    """
    if addr.tls and not getattr(client, _TLS_DONE, False):
        client.tls_set_context(tls_context(addr, url))
        setattr(client, _TLS_DONE, True)
    if addr.username is not None:
        if addr.password is not None and not addr.tls and not is_loopback(addr.host):
            # parse_broker_url refuses this already; a hand-made BrokerAddress must not slip by.
            raise FleetError(f"refusing to send the password of {addr.username!r} unencrypted "
                             f"over {redact_url(url)}: expected mqtts:// (TLS)")
        client.username_pw_set(addr.username, addr.password)


_configure = configure  # the name the reporter's connect_async path first used


def wait_acked(info: mqtt.MQTTMessageInfo, timeout_s: float, what: str,
               strict: bool = False) -> bool:
    """Wait (bounded) for a PUBACK; True if it came, else raise FleetError (``strict``) or log.

    Args:
        info: What ``client.publish`` returned.
        timeout_s: Longest wait.
        what: Names the message in the error, e.g. ``"birth of pi-01 to mqtt://..."``.
        strict: Raise instead of logging a warning.
    """
    problem: str | None = None
    try:
        info.wait_for_publish(max(0.0, timeout_s))
        if not info.is_published():
            problem = f"no PUBACK within {timeout_s:g} s"
    except (RuntimeError, ValueError) as exc:
        problem = str(exc)
    if problem is None:
        return True
    text = f"{what} not acknowledged: {problem}"
    if strict:
        raise FleetError(text)
    log.warning("%s", text)
    return False


def _socket_error(exc: OSError, addr: BrokerAddress, url: str) -> FleetError:
    """Turn what ``client.connect`` raised into a message that says what to check."""
    shown = redact_url(url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        trust = f"the CA in {addr.ca}" if addr.ca else "a CA in the system trust store (or ?ca=)"
        return FleetError(
            f"TLS certificate verification failed for MQTT broker at {shown}: "
            f"{exc.verify_message or exc}: expected a broker certificate signed by {trust} that "
            f"names {addr.host!r} in its subjectAltName; check ?ca= and the host in the URL")
    # A plain-MQTT port answers a TLS ClientHello by closing the connection.
    closed = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    if isinstance(exc, ssl.SSLError) or (addr.tls and isinstance(exc, closed)):
        return FleetError(
            f"TLS handshake with MQTT broker at {shown} failed ({exc}): expected a TLS listener "
            f"on port {addr.port}; if that port speaks plain MQTT use mqtt://, and if the broker "
            "requires a client certificate give ?cert=&key=")
    return FleetError(
        f"cannot reach MQTT broker at {shown} ({exc}): expected a broker listening there "
        "(edgemeta.fleet.start_broker() starts a local one)")


def _refusal(waiter: ConnectWaiter, addr: BrokerAddress, url: str, timeout_s: float) -> str:
    """Why the first connection did not succeed, with what to check."""
    if waiter.refused_code in _AUTH_REFUSALS:
        if addr.username is None:
            who = "an anonymous client (no user in the URL)"
        elif addr.password is not None:
            who = f"user {addr.username!r} with a password"
        else:
            who = (f"user {addr.username!r} without a password (neither ?password_file= nor "
                   f"{PASSWORD_ENV} was set)")
        return (f"the broker refused {who}: not authorized ({waiter.failure}); expected a "
                f"user the broker knows (mqtts://USER@HOST) with its password in {PASSWORD_ENV} "
                "or ?password_file=PATH, allowed by the broker's ACL to use this client's topics")
    if waiter.failure:
        return waiter.failure
    why = f"no CONNACK within {timeout_s:g} s"
    if waiter.closed_early:
        why += (f"; the broker closed the connection {waiter.closed_early} time(s) before "
                "answering")
        why += (" (does it require a client certificate? give ?cert=&key=)" if addr.tls
                else " (if that port expects TLS, use mqtts://)")
    return why


def connect(
    client: mqtt.Client, url: str, keepalive_s: int, timeout_s: float, waiter: ConnectWaiter
) -> None:
    """Configure TLS/credentials from ``url``, connect, start paho's thread, wait for the CONNACK.

    Raises:
        FleetError: Bad URL or TLS files, an unreachable broker, a failed TLS handshake or
            certificate check, refused credentials, or no CONNACK within ``timeout_s``; the
            network thread is stopped again in those cases.
    """
    addr = parse_broker_url(url)
    configure(client, addr, url)
    client.connect_timeout = timeout_s
    try:
        client.connect(addr.host, addr.port, keepalive=keepalive_s)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise _socket_error(exc, addr, url) from None
    # Count connections closed before any CONNACK (a TLS/plain mismatch, a rejected client
    # certificate) for the error message; the caller's own callback still runs.
    user_on_disconnect = client.on_disconnect

    def on_disconnect(*args: Any) -> None:
        waiter.on_disconnect()
        if user_on_disconnect is not None:
            user_on_disconnect(*args)

    client.on_disconnect = on_disconnect
    client.loop_start()
    try:
        ok = waiter.wait(timeout_s)
    finally:
        client.on_disconnect = user_on_disconnect
    if not ok:
        client.loop_stop()
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - best effort cleanup of a half-open connection
            pass
        raise FleetError(f"cannot connect to MQTT broker at {redact_url(url)}: "
                         f"{_refusal(waiter, addr, url, timeout_s)}")


def connect_subscribed(client: mqtt.Client, url: str, keepalive_s: int, timeout_s: float,
                       waiter: ConnectWaiter, subscribed: threading.Event, what: str) -> None:
    """:func:`connect`, then wait for the SUBACK the caller's ``on_connect`` asked for.

    Messages published between CONNACK and SUBACK would be missed, so no caller may go on
    before the broker granted its subscriptions.

    Raises:
        FleetError: As :func:`connect`, or no SUBACK within ``timeout_s`` (``what`` names the
            subscriptions in the message); the connection is closed again then.
    """
    connect(client, url, keepalive_s, timeout_s, waiter)
    if not subscribed.wait(timeout_s):
        client.disconnect()
        client.loop_stop()
        raise FleetError(f"MQTT broker at {redact_url(url)} did not acknowledge {what} within "
                         f"{timeout_s:g} s")
