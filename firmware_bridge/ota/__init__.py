"""Over-the-air flashing through an MQTT broker, for boards behind NAT.

- :mod:`~firmware_bridge.ota.protocol`: topics, the offer, binary chunks, board status.
- :mod:`~firmware_bridge.ota.receiver` / :mod:`~firmware_bridge.ota.board`: the board side
  (resumable, verifying, installing through :func:`firmware_bridge.install.install_bundle`).
- :mod:`~firmware_bridge.ota.sender` / :mod:`~firmware_bridge.ota.transport`: the host side, one
  device (``MqttTransport``) or many multiplexed on one connection (``OtaEngine``).
- :mod:`~firmware_bridge.ota.rollout`: canary-first fleet roll-outs.

See docs/telemetry.md ("Over-the-air flashing") for the wire protocol.
"""

from firmware_bridge.ota.board import BoardOta, home_birth
from firmware_bridge.ota.protocol import (
    MAX_CHUNK_BYTES,
    Offer,
    Status,
    decode_chunk,
    decode_offer,
    decode_status,
    encode_chunk,
    ota_topic,
)
from firmware_bridge.ota.receiver import REJECT_KINDS, OtaReceiver
from firmware_bridge.ota.sender import OtaEngine, Transfer
from firmware_bridge.ota.transport import MqttTransport, split_mqtt_url

__all__ = [
    "MAX_CHUNK_BYTES",
    "REJECT_KINDS",
    "BoardOta",
    "MqttTransport",
    "Offer",
    "OtaEngine",
    "OtaReceiver",
    "Status",
    "Transfer",
    "decode_chunk",
    "decode_offer",
    "decode_status",
    "encode_chunk",
    "home_birth",
    "ota_topic",
    "split_mqtt_url",
]
