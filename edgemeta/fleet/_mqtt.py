"""paho-mqtt plumbing shared by the reporter and the monitor."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edgemeta.errors import FleetError

DEFAULT_PORT = 1883


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` into host and port.

    Raises:
        FleetError: For any other scheme, a missing host or a bad port.
    """
    if not isinstance(url, str):
        raise FleetError(f"broker URL must be a string like mqtt://127.0.0.1:1883, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FleetError(f"bad broker URL {url!r} ({exc}): expected mqtt://host:port") from None
    if parts.scheme != "mqtt":
        # mqtts/ws would need TLS/websocket setup this SDK does not do yet; say so plainly.
        raise FleetError(
            f"unsupported broker URL {url!r}: expected mqtt://host[:port] (plain MQTT over TCP)"
        )
    if not parts.hostname:
        raise FleetError(f"broker URL {url!r} has no host: expected mqtt://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise FleetError(
            f"broker URL {url!r} has a path, query or credentials: expected mqtt://host[:port]"
        )
    return parts.hostname, port if port is not None else DEFAULT_PORT


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
        self._failed = threading.Event()

    def on_connect(self, reason_code: Any) -> bool:
        """Record a CONNACK; returns True when the connection was accepted."""
        if reason_code.is_failure:
            self.failure = f"broker refused the connection: {reason_code}"
            self._failed.set()
            return False
        self.connected.set()
        return True

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


def connect(
    client: mqtt.Client, url: str, keepalive_s: int, timeout_s: float, waiter: ConnectWaiter
) -> None:
    """Connect, start paho's network thread and wait for the CONNACK.

    Raises:
        FleetError: If the broker cannot be reached or refuses within ``timeout_s``; the network
            thread is stopped again in that case.
    """
    host, port = parse_broker_url(url)
    client.connect_timeout = timeout_s
    try:
        client.connect(host, port, keepalive=keepalive_s)
    except OSError as exc:
        raise FleetError(
            f"cannot reach MQTT broker at {url} ({exc}): expected a broker listening there "
            "(edgemeta.fleet.start_broker() starts a local one)"
        ) from None
    client.loop_start()
    if not waiter.wait(timeout_s):
        client.loop_stop()
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - best effort cleanup of a half-open connection
            pass
        why = waiter.failure or f"no CONNACK within {timeout_s:g} s"
        raise FleetError(f"cannot connect to MQTT broker at {url}: {why}")
