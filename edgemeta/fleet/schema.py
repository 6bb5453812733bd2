"""Topic namespace and versioned JSON payloads of the fleet protocol.

Topics are ``edgemeta/v1/<fleet>/<device>/<kind>``, plus the retained host state at
``edgemeta/v1/_host/<host_id>``. Payloads are UTF-8 JSON objects carrying ``"schema": 2``.
Decoding is strict on purpose: the monitor runs against a shared broker where anything can be
published, so every field is type-checked and a bad message raises
:class:`~edgemeta.errors.MessageError` naming the field and the expected type. The JSON Schema
of every kind is generated from the same field table (:mod:`edgemeta.fleet.jsonschema`) and
shipped in ``edgemeta/fleet/schemas/``.

Sequence numbers follow Eclipse Sparkplug B: ``bd_seq`` (0-255) counts a device's connections and
is carried by its birth and by the Last Will death of the same connection; ``seq`` (0-255,
wrapping) is 0 in every birth and +1 on every later message of the device (telemetry, reply,
graceful death), so the monitor sees a gap as soon as one message is missing. ``boot`` and ``n``
(edgemeta's own) identify each telemetry message uniquely across reconnects, so messages replayed
from the device's disk spool are counted exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from edgemeta.errors import MessageError
from edgemeta.fleet._fields import (
    COMMANDS,
    MAX_PAYLOAD_BYTES,
    MISSING,
    SCHEMA_VERSION,
    Validated,
    describe,
    expected,
    is_int,
    validate_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "HOST_ROOT",
    "MAX_PAYLOAD_BYTES",
    "MAX_COMMAND_BYTES",
    "load_json_payload",
    "COMMANDS",
    "KINDS",
    "TopicParts",
    "Birth",
    "Telemetry",
    "Death",
    "Command",
    "Reply",
    "HostState",
    "Message",
    "MESSAGE_TYPES",
    "topic",
    "topic_filter",
    "host_topic",
    "parse_topic",
    "decode",
    "decode_host_state",
    "validate_id",
]

TOPIC_ROOT = "edgemeta/v1"
HOST_ROOT = f"{TOPIC_ROOT}/_host"
# Commands carry images (enroll, classify): larger than telemetry, still bounded.
MAX_COMMAND_BYTES = 1024 * 1024
DeathReason = Literal["graceful", "lost"]
_V = TypeVar("_V", bound=Validated)


@dataclass(frozen=True)
class Birth(Validated):
    """Published retained on every (re)connect; says which model a device runs.

    Attributes:
        device_id: Device id (also in the topic).
        fleet: Fleet id (also in the topic).
        session: Birth/death session id: ``int(time.time()*1000)`` at reporter construction,
            larger again after each reconnect (the Last Will carries the same id).
        ts: Unix seconds when the birth was composed.
        model_version: Bundle version, or None when no model is loaded.
        model_sha256: Hex digest of the model, or None.
        backend: Interpreter backend name, or None.
        board: Board profile name, or None.
        labels: Class labels currently enrolled.
        agent_version: edgemeta version on the device.
        bd_seq: Birth/death sequence number of this connection (0-255); the Last Will of the
            same connection carries the same value.
        seq: Message sequence number: always 0 in a birth (the sequence restarts here).
        interval_s: The device's telemetry period, so the monitor knows when silence means
            offline (extra reports in between do not shorten it); None if it has no timer.
    """

    KIND: ClassVar[str] = "birth"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "ts": "ufloat",
        "model_version": "str?", "model_sha256": "str?", "backend": "str?", "board": "str?",
        "labels": "labels", "agent_version": "str", "bd_seq": "byte", "seq": "byte",
        "interval_s": "ufloat?",
    }

    device_id: str
    fleet: str
    session: int
    ts: float
    model_version: str | None
    model_sha256: str | None
    backend: str | None
    board: str | None
    labels: tuple[str, ...]
    agent_version: str
    bd_seq: int = 0
    seq: int = 0
    interval_s: float | None = None


@dataclass(frozen=True)
class Telemetry(Validated):
    """Periodic metrics of one device.

    Attributes:
        device_id: Device id.
        fleet: Fleet id.
        session: Session id of the publishing connection (same as its birth).
        seq: Message sequence number, 1-255 then wrapping to 0; +1 per message since the birth.
        ts: Unix seconds when composed.
        uptime_s: Seconds since the reporter was started.
        model_version: Bundle version or None.
        model_sha256: Model digest or None.
        labels: Enrolled class labels.
        n_classes: Number of enrolled classes.
        inference_count: Inferences since the agent started.
        latency_p50_ms: Median inference latency, None before any inference.
        latency_p95_ms: 95th percentile latency, None before any inference.
        rss_bytes: Resident memory of the agent process.
        accuracy: Few-shot accuracy on labelled images, None when unknown.
        evaluated: Number of labelled images ``accuracy`` is computed over.
        boot: Milliseconds since the epoch when the reporting process started.
        n: Number of this telemetry message since ``boot`` (0, 1, 2, ...); ``(boot, n)`` is
            unique, also for messages replayed from the spool.
        dropped: Telemetry messages dropped from the full spool since ``boot``.
        replayed: True if the message was kept in the spool while the broker was unreachable
            and sent after reconnecting (``ts`` is when it was composed).
    """

    KIND: ClassVar[str] = "telemetry"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "seq": "byte", "ts": "ufloat",
        "uptime_s": "ufloat", "model_version": "str?", "model_sha256": "str?",
        "labels": "labels", "n_classes": "uint", "inference_count": "uint",
        "latency_p50_ms": "ufloat?", "latency_p95_ms": "ufloat?", "rss_bytes": "uint",
        "accuracy": "fraction?", "evaluated": "uint", "boot": "uint", "n": "uint",
        "dropped": "uint", "replayed": "bool",
    }

    device_id: str
    fleet: str
    session: int
    seq: int
    ts: float
    uptime_s: float
    model_version: str | None
    model_sha256: str | None
    labels: tuple[str, ...]
    n_classes: int
    inference_count: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    rss_bytes: int
    accuracy: float | None
    evaluated: int
    boot: int = 0
    n: int = 0
    dropped: int = 0
    replayed: bool = False


@dataclass(frozen=True)
class Death(Validated):
    """A device going away: graceful on ``stop()``, ``lost`` as the broker-sent Last Will.

    Attributes:
        device_id: Device id.
        fleet: Fleet id.
        session: Session id of the connection that ended; lets the monitor ignore stale deaths.
        ts: Unix seconds, or None in the Last Will (composed at connect time, sent later).
        reason: ``"graceful"`` or ``"lost"``.
        bd_seq: The ``bd_seq`` of the birth of the connection that ended.
        seq: Message sequence number of a graceful death; None in the Last Will (composed at
            connect time, so it cannot know the sequence).
    """

    KIND: ClassVar[str] = "death"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "ts": "ufloat?", "reason": "reason",
        "bd_seq": "byte", "seq": "byte?",
    }

    device_id: str
    fleet: str
    session: int
    ts: float | None
    reason: DeathReason
    bd_seq: int = 0
    seq: int | None = None




@dataclass(frozen=True)
class Command(Validated):
    """A request from a host to one device, on ``.../<device>/cmd``; answered by a :class:`Reply`.

    Attributes:
        id: Correlation id chosen by the sender (1-64 characters ``[A-Za-z0-9_.-]``); the reply
            carries it back.
        command: One of :data:`COMMANDS`.
        args: Arguments of the command (see docs/telemetry.md); checked by the device.
        ts: Unix seconds when sent.
        host_id: The sending host, for the device's log.
    """

    KIND: ClassVar[str] = "cmd"
    MAX_BYTES: ClassVar[int] = MAX_COMMAND_BYTES
    _SPEC: ClassVar[dict[str, str]] = {
        "id": "id", "command": "command", "args": "object", "ts": "ufloat", "host_id": "str",
    }

    id: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0
    host_id: str = ""


@dataclass(frozen=True)
class Reply(Validated):
    """A device's answer to a :class:`Command`, on ``.../<device>/reply``.

    Attributes:
        id: The command's id (or ``"invalid"`` when the command could not even be parsed).
        device_id: Device id.
        fleet: Fleet id.
        session: Session id of the replying connection.
        seq: Message sequence number (see the module docstring).
        ts: Unix seconds when composed.
        ok: Whether the command was carried out.
        result: What it produced (e.g. predictions), or None.
        error: Why it was refused or failed, or None; a refused command changed nothing.
    """

    KIND: ClassVar[str] = "reply"
    _SPEC: ClassVar[dict[str, str]] = {
        "id": "id", "device_id": "id", "fleet": "id", "session": "uint", "seq": "byte",
        "ts": "ufloat", "ok": "bool", "result": "object?", "error": "str?",
    }

    id: str
    device_id: str
    fleet: str
    session: int
    seq: int
    ts: float
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class HostState(Validated):
    """Retained on ``edgemeta/v1/_host/<host_id>``: whether a monitor is listening.

    Published ``online: true`` when a monitor connects; its Last Will (also retained) says
    ``online: false``, so devices always know whether anyone hears them.
    """

    KIND: ClassVar[str] = "host"
    _SPEC: ClassVar[dict[str, str]] = {"host_id": "id", "online": "bool", "ts": "ufloat?"}

    host_id: str
    online: bool
    ts: float | None = None


Message = Union[Birth, Telemetry, Death, Command, Reply]

# The single registry of per-device kinds: topic validation and decoding both read it.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (Birth, Telemetry, Death, Command, Reply)
}
KINDS: tuple[str, ...] = tuple(MESSAGE_TYPES)


@dataclass(frozen=True)
class TopicParts:
    """The pieces of an ``edgemeta/v1/<fleet>/<device>/<kind>`` topic."""

    fleet: str
    device_id: str
    kind: str


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown message kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def topic(fleet: str, device: str, kind: str) -> str:
    """Build the topic of one device's messages of one kind.

    Args:
        fleet: Fleet id.
        device: Device id.
        kind: One of :data:`KINDS`.

    Raises:
        MessageError: If an id or the kind is invalid.
    """
    validate_id(fleet, "fleet")
    validate_id(device, "device id")
    return f"{TOPIC_ROOT}/{fleet}/{device}/{_check_kind(kind)}"


def topic_filter(fleet: str = "+", device: str = "+", kind: str = "+") -> str:
    """Build a subscription filter; each part is an id/kind or the single-level wildcard ``+``.

    Raises:
        MessageError: If a part is neither ``+`` nor valid.
    """
    if fleet != "+":
        validate_id(fleet, "fleet")
    if device != "+":
        validate_id(device, "device id")
    if kind != "+":
        _check_kind(kind)
    return f"{TOPIC_ROOT}/{fleet}/{device}/{kind}"


def parse_topic(value: str) -> TopicParts:
    """Split a topic into fleet, device id and kind.

    Raises:
        MessageError: If the topic is not ``edgemeta/v1/<fleet>/<device>/<kind>`` with valid ids
            and a known kind.
    """
    if not isinstance(value, str):
        raise MessageError(f"topic must be a string, got {describe(value)}")
    parts = value.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise MessageError(
            f"topic {value!r} is not in the telemetry namespace: "
            f"expected {TOPIC_ROOT}/<fleet>/<device>/<kind>"
        )
    fleet = validate_id(parts[2], "fleet")
    device = validate_id(parts[3], "device id")
    return TopicParts(fleet=fleet, device_id=device, kind=_check_kind(parts[4]))


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and break other consumers.
    raise MessageError(f"payload contains {name}: expected finite numbers only (strict JSON)")


def decode(kind: str, payload: bytes | bytearray) -> Message:
    """Decode and validate one payload.

    Args:
        kind: Message kind, usually from :func:`parse_topic`.
        payload: Raw MQTT payload.

    Returns:
        A :class:`Birth`, :class:`Telemetry`, :class:`Death`, :class:`Command` or
        :class:`Reply`. Unknown extra fields are ignored so that a schema can grow optional
        fields without breaking older monitors.

    Raises:
        MessageError: Naming what was wrong: unknown kind, oversized payload, not UTF-8 JSON, not
            an object, missing or unsupported schema version, missing or wrong-typed field.
    """
    return _decode_as(MESSAGE_TYPES[_check_kind(kind)], kind, payload)


def load_json_payload(kind: str, payload: object, max_bytes: int) -> Any:
    """Strict JSON of an MQTT payload; every way it can be unusable is a MessageError.

    Shared by the telemetry schema and the OTA protocol: both run on paho's network thread,
    where anything else raised (RecursionError, ValueError for an over-long integer) would be
    logged as a crash instead of counted as a rejected message.

    Raises:
        MessageError: Not bytes, over ``max_bytes``, not UTF-8, not JSON, NaN/Infinity, nested
            too deeply, or numbers Python will not parse; the message names ``kind``.
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise MessageError(f"{kind} payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise MessageError(f"{kind} payload is {len(payload)} bytes: expected at most {max_bytes}")
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise MessageError(f"{kind} payload is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MessageError(f"{kind} payload is not JSON: {exc}") from None
    except MessageError:
        raise  # NaN/Infinity, from _reject_constant
    except RecursionError:
        # b"[" * 30000 is far below the size cap; callers run on paho's network thread.
        raise MessageError(f"{kind} payload is nested too deeply: expected a flat JSON "
                           "object") from None
    except Exception as exc:  # noqa: BLE001 - e.g. ValueError for an over-long integer
        raise MessageError(f"{kind} payload is not usable JSON: {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from None
    return obj


def _decode_as(cls: type[_V], kind: str, payload: bytes | bytearray) -> _V:
    obj = load_json_payload(kind, payload, cls.MAX_BYTES)
    try:
        return _from_object(cls, kind, obj)
    except RecursionError:  # checking (or describing) a value nested close to the limit
        raise MessageError(f"{kind} payload is nested too deeply: expected a flat JSON "
                           "object") from None


def _from_object(cls: type[_V], kind: str, obj: Any) -> _V:
    if not isinstance(obj, dict):
        raise MessageError(f"{kind} payload must be a JSON object, got {type(obj).__name__}")
    version = obj.get("schema", MISSING)
    if version is MISSING:
        raise MessageError(f"{kind} payload has no 'schema' field: expected "
                           f"\"schema\": {SCHEMA_VERSION}")
    if not is_int(version) or version != SCHEMA_VERSION:
        raise MessageError(
            f"{kind} payload has unsupported schema version {version!r}: "
            f"expected {SCHEMA_VERSION}"
        )
    kwargs: dict[str, Any] = {}
    for name, spec in cls._SPEC.items():
        if name not in obj:
            raise MessageError(
                f"{kind} payload is missing field '{name}': expected {expected(spec)}"
            )
        kwargs[name] = obj[name]
    return cls(**kwargs)  # __post_init__ type-checks every field


def host_topic(host_id: str) -> str:
    """The retained host-state topic of one monitor."""
    return f"{HOST_ROOT}/{validate_id(host_id, 'host id')}"


def decode_host_state(topic_name: str, payload: bytes | bytearray) -> HostState:
    """Decode a host-state message and check it matches its topic.

    Raises:
        MessageError: Wrong topic, or a payload that is not a valid host state.
    """
    prefix = HOST_ROOT + "/"
    if not isinstance(topic_name, str) or not topic_name.startswith(prefix):
        raise MessageError(f"topic {topic_name!r} is not a host-state topic: expected "
                           f"{HOST_ROOT}/<host_id>")
    state = _decode_as(HostState, "host", payload)
    if state.host_id != topic_name[len(prefix):]:
        raise MessageError(f"host state of {state.host_id!r} on the topic of "
                           f"{topic_name[len(prefix):]!r}")
    return state
