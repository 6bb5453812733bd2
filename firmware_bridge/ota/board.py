"""Board side on a real MQTT connection: an :class:`OtaReceiver` driven by a paho client.

``BoardOta`` subscribes to the device's ``ota/offer`` and ``ota/chunk`` topics (QoS 1) and feeds
every message to the receiver on paho's network thread; installs therefore run there too, which
only pauses this connection. A small timer thread calls :meth:`OtaReceiver.tick` so a stalled
transfer is asked for again. Optionally it also publishes a retained birth (for boards without a
:class:`~edgemeta.fleet.DeviceReporter`, e.g. simulated ones) on connect and after each install.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta import __version__
from edgemeta.bundle import BoardHome, read_bundle
from edgemeta.errors import BundleError
from edgemeta.fleet import _mqtt
from edgemeta.fleet._lifecycle import StartStop
from edgemeta.fleet.schema import Birth, topic, validate_id
from firmware_bridge.install import InstallResult
from firmware_bridge.ota._guard import never_raises
from firmware_bridge.ota.protocol import ota_topic
from firmware_bridge.ota.receiver import OtaReceiver

__all__ = ["BoardOta", "home_birth"]

log = logging.getLogger(__name__)


def home_birth(home: BoardHome | str | Path, device_id: str, fleet: str,
               session: int | None = None, board: str | None = None) -> Birth:
    """A birth message describing the current model of a board home (no runtime needed)."""
    home = home if isinstance(home, BoardHome) else BoardHome.at(home)
    version = sha = None
    try:
        if home.current_version() is not None:
            manifest = read_bundle(home.current_bundle()).manifest
            version, sha = manifest.version, manifest.model_sha256
    except BundleError:
        pass
    return Birth(device_id=device_id, fleet=fleet,
                 session=session if session is not None else int(time.time() * 1000),
                 ts=time.time(), model_version=version, model_sha256=sha, backend=None,
                 board=board, labels=(), agent_version=__version__)


class BoardOta(StartStop):
    """One board's OTA endpoint on its own MQTT connection.

    Args:
        broker_url: ``mqtt://host[:port]``.
        home: The board home to install into.
        device_id: This board's id.
        fleet: This board's fleet.
        on_installed: Called with the :class:`InstallResult` after each successful install.
        install_options: Extra keyword arguments for ``install_bundle``.
        birth: ``birth() -> Birth``; when given, published retained on connect and after each
            install (so a roll-out sees the new version). Leave None when a DeviceReporter runs.
        tick_s: Period of the stall check; None for no timer thread.
        receiver_options: More keyword arguments for :class:`OtaReceiver`.

    Raises:
        FleetError: On a bad broker URL. MessageError: on a bad id.
    """

    def __init__(self, broker_url: str, home: BoardHome | str | Path, device_id: str,
                 fleet: str = "default", *,
                 on_installed: Callable[[InstallResult], Any] | None = None,
                 install_options: dict[str, Any] | None = None,
                 birth: Callable[[], Birth] | None = None, tick_s: float | None = 1.0,
                 connect_timeout_s: float = 10.0, keepalive_s: int = 30,
                 **receiver_options: Any) -> None:
        _mqtt.parse_broker_url(broker_url)
        self._url = broker_url
        self.device_id = validate_id(device_id, "device id")
        self.fleet = validate_id(fleet, "fleet")
        self._user_on_installed = on_installed
        self._birth = birth
        self._tick_s = tick_s
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self.receiver = OtaReceiver(home, device_id, fleet, self._publish,
                                    install_options=install_options,
                                    on_installed=self._installed, **receiver_options)
        self._topics = [(ota_topic(fleet, device_id, "offer"), 1),
                        (ota_topic(fleet, device_id, "chunk"), 1)]
        self._waiter = _mqtt.ConnectWaiter()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = False
        self._client = _mqtt.new_client(f"edgemeta-ota-{fleet}-{device_id}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def client(self) -> mqtt.Client:
        return self._client

    def start(self) -> None:
        """Connect and subscribe; returns once the broker acknowledged the subscription.

        Raises:
            FleetError: If the broker cannot be reached in time.
        """
        if self._started:
            return
        _mqtt.connect_subscribed(self._client, self._url, self._keepalive_s,
                                 self._connect_timeout_s, self._waiter, self._subscribed,
                                 f"the OTA subscriptions of {self.device_id}")
        self._started = True
        if self._tick_s:
            self._ticker = threading.Thread(target=self._run_ticker, daemon=True,
                                            name=f"edgemeta-ota-{self.device_id}")
            self._ticker.start()

    def stop(self) -> None:
        """Disconnect; a transfer in progress stays on disk and resumes on the next offer."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5.0)
        try:
            self._client.disconnect()
            self._client.loop_stop()
        finally:
            self.receiver.close()  # the partial copy's file descriptors

    def publish_birth(self) -> None:
        if self._birth is not None:
            self._client.publish(topic(self.fleet, self.device_id, "birth"),
                                 self._birth().to_payload(), qos=1, retain=True)

    # --- internals --------------------------------------------------------------------------------

    def _publish(self, topic_: str, payload: bytes) -> None:
        self._client.publish(topic_, payload, qos=1)

    def _installed(self, result: InstallResult) -> None:
        if self._user_on_installed is not None:
            self._user_on_installed(result)
        self.publish_birth()

    def _run_ticker(self) -> None:
        assert self._tick_s
        tick = never_raises(self.receiver.tick)
        while not self._stop.wait(self._tick_s):
            tick()

    @never_raises
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        try:
            if not reason_code.is_failure:
                client.subscribe(self._topics)  # clean sessions forget subscriptions: every time
                try:
                    self.publish_birth()
                except Exception:  # noqa: BLE001 - a birth is informational
                    log.warning("birth of %s not sent", self.device_id, exc_info=True)
        finally:
            self._waiter.on_connect(reason_code)

    @never_raises
    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        if reason_codes and not any(rc.is_failure for rc in reason_codes):
            self._subscribed.set()
        else:
            log.error("broker refused the OTA subscriptions of %s: %s", self.device_id,
                      reason_codes)

    @never_raises
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.receiver.handle(message.topic, message.payload)
