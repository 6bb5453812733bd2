"""``mqtt://broker[:port]``: the :class:`~firmware_bridge.transports.Transport` for one device."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from edgemeta.bundle import MAX_BUNDLE_BYTES
from edgemeta.errors import EdgemetaError, FlashError, MessageError
from edgemeta.fleet import _mqtt
from edgemeta.fleet.schema import validate_id
from firmware_bridge.install import InstallResult
from firmware_bridge.ota.protocol import DEFAULT_CHUNK_BYTES
from firmware_bridge.ota.sender import OtaEngine, Transfer

__all__ = ["MqttTransport", "read_bundle_bytes", "split_mqtt_url"]


def split_mqtt_url(url: str) -> tuple[str, str | None, str | None]:
    """``mqtt[s]://host[:port][/[FLEET/]DEVICE][?query]`` -> (broker URL, fleet, device).

    The query (TLS and password options, see :mod:`edgemeta.fleet._mqtt`) stays with the broker
    URL; fleet and device are None when the path does not name them.

    Raises:
        FlashError: Not a usable mqtt URL, or a bad fleet/device id in the path.
    """
    try:
        parts = urlsplit(url)
        # The query belongs to the broker (mqtts://host?ca=...&password_file=...).
        broker = f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
        _mqtt.parse_broker_url(broker)  # a bad broker part (port 0, TLS files) is named here
        if parts.fragment:
            raise FlashError(f"target {url!r} has a fragment: expected "
                             "mqtt[s]://BROKER[:PORT][/[FLEET/]DEVICE][?TLS options]")
        path = parts.path.strip("/")
        names = path.split("/") if path else []
        if len(names) > 2:
            raise FlashError(f"target {url!r}: expected mqtt://BROKER[:PORT][/[FLEET/]DEVICE]")
        fleet = validate_id(names[0], "fleet") if len(names) == 2 else None
        device = validate_id(names[-1], "device id") if names else None
    except FlashError:
        raise
    except (ValueError, EdgemetaError) as exc:  # FleetError/MessageError from the checks
        raise FlashError(f"target {url!r}: {exc}") from None
    return broker, fleet, device


def read_bundle_bytes(bundle_path: str | os.PathLike[str]) -> bytes:
    """The bundle file's bytes, size-capped; FlashError if unreadable."""
    src = Path(bundle_path)
    try:
        if src.stat().st_size > MAX_BUNDLE_BYTES:
            raise FlashError(f"cannot send {src}: larger than {MAX_BUNDLE_BYTES} bytes")
        return src.read_bytes()
    except OSError as exc:
        raise FlashError(f"cannot read bundle {src}: {exc}") from None


class MqttTransport:
    """Over-the-air flashing of one device through an MQTT broker (boards behind NAT).

    Args:
        url: ``mqtt://host[:port]``, optionally with ``/[FLEET/]DEVICE``.
        device: Device id (overrides the URL's).
        fleet: Fleet id (overrides the URL's; default ``default``).
        timeout_s: Longest time for the whole transfer and install.
        answer_timeout_s: Give up when the device answers no offer for this long.
        chunk_bytes: Chunk size (at most 64 KiB).

    Raises:
        FlashError: Bad URL, or no device given.
    """

    def __init__(self, url: str, device: str | None = None, fleet: str | None = None, *,
                 timeout_s: float = 300.0, answer_timeout_s: float = 10.0,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        broker, url_fleet, url_device = split_mqtt_url(url)
        self.broker_url = broker
        if not (device or url_device):
            raise FlashError(f"target {url!r} names no device: give it as "
                             "mqtt://BROKER[:PORT]/[FLEET/]DEVICE or with --device ID")
        try:
            self.device = validate_id(device or url_device, "device id")
            self.fleet = validate_id(fleet or url_fleet or "default", "fleet")
        except MessageError as exc:
            raise FlashError(f"target {url!r}: {exc}; give the device as mqtt://BROKER/DEVICE "
                             "or with --device ID") from None
        self.timeout_s = timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.chunk_bytes = chunk_bytes
        self.last_transfer: Transfer | None = None

    @classmethod
    def from_url(cls, url: str) -> "MqttTransport":
        return cls(url)

    @property
    def url(self) -> str:
        return f"{self.broker_url}/{self.fleet}/{self.device}"

    def push(self, bundle_path: str | os.PathLike[str], *,
             allow_downgrade: bool = False) -> InstallResult:
        """Send the bundle in chunks, wait until the board verified and installed it.

        Raises:
            InstallError: The board refused or failed (its ``reason``: ``disk-full``,
                ``downgrade``, ``health-check``, ...), or ``offline``/``timeout``; the board's
                previous model stays current.
            FlashError: The bundle cannot be read, or the broker cannot be reached.
        """
        data = read_bundle_bytes(bundle_path)
        engine = OtaEngine(self.broker_url, answer_timeout_s=self.answer_timeout_s)
        try:
            engine.start()
        except FlashError:
            raise
        except Exception as exc:
            raise FlashError(str(exc)) from exc
        try:
            t = engine.send(self.fleet, self.device, data, allow_downgrade=allow_downgrade,
                            chunk_bytes=self.chunk_bytes, timeout_s=self.timeout_s)
            engine.wait([t], self.timeout_s + 5.0)
            self.last_transfer = t
        finally:
            engine.stop()
        return t.result()
