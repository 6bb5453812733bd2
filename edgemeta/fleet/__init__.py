"""The fleet over MQTT: schema, board-side reporter, host-side monitor, commands, simulator.

Board-side code: imports neither TensorFlow nor amqtt (the embedded broker loads amqtt lazily).
See docs/telemetry.md for topics, payloads and the birth/death lifecycle.
"""

from edgemeta.fleet.alerts import Alert, AlertConfig
from edgemeta.fleet.broker import Broker, MosquittoSecurity, free_port, start_broker
from edgemeta.fleet.commander import FleetCommander, encode_images
from edgemeta.fleet.monitor import DeviceState, FleetMonitor
from edgemeta.fleet.reporter import DeviceReporter, DeviceStatus
from edgemeta.fleet.schema import (
    COMMANDS,
    KINDS,
    MAX_COMMAND_BYTES,
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Birth,
    Command,
    Death,
    HostState,
    Reply,
    Telemetry,
    TopicParts,
    decode,
    decode_host_state,
    host_topic,
    parse_topic,
    topic,
    topic_filter,
)
from edgemeta.fleet.simulate import FleetSimulator
from edgemeta.fleet.view import render_table, watch

__all__ = [
    "Alert",
    "AlertConfig",
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "Command",
    "HostState",
    "Reply",
    "decode_host_state",
    "host_topic",
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "Birth",
    "Broker",
    "Death",
    "DeviceReporter",
    "DeviceState",
    "DeviceStatus",
    "FleetCommander",
    "FleetMonitor",
    "FleetSimulator",
    "encode_images",
    "MosquittoSecurity",
    "Telemetry",
    "TopicParts",
    "decode",
    "free_port",
    "parse_topic",
    "render_table",
    "start_broker",
    "topic",
    "topic_filter",
    "watch",
]
