"""Topic namespace and versioned JSON payloads of the fleet telemetry protocol.

Topics are ``edgemeta/v1/<fleet>/<device>/<kind>``. Payloads are UTF-8 JSON objects carrying
``"schema": 1``. Decoding is strict on purpose: the monitor runs against a shared broker where
anything can be published, so every field is type-checked and a bad message raises
:class:`~edgemeta.errors.MessageError` naming the field and the expected type.

Adding a kind (cmd, reply, ota, ...) means adding a frozen dataclass with a ``_SPEC`` and an entry
in :data:`MESSAGE_TYPES`; :data:`KINDS`, :func:`topic`, :func:`parse_topic` and :func:`decode`
follow from that table.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Union

from edgemeta.errors import MessageError

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "MAX_PAYLOAD_BYTES",
    "KINDS",
    "TopicParts",
    "Birth",
    "Telemetry",
    "Death",
    "Message",
    "MESSAGE_TYPES",
    "topic",
    "topic_filter",
    "parse_topic",
    "decode",
    "validate_id",
]

SCHEMA_VERSION = 1
TOPIC_ROOT = "edgemeta/v1"
# 64 KiB is far above a realistic message (a few hundred bytes plus labels) and keeps a hostile
# or buggy publisher from making the monitor parse megabytes.
MAX_PAYLOAD_BYTES = 64 * 1024

_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ID_EXPECTED = "1-64 characters from A-Z a-z 0-9 _ . -"
DeathReason = Literal["graceful", "lost"]
_REASONS = ("graceful", "lost")


def validate_id(value: object, what: str) -> str:
    """Check a fleet or device id and return it.

    Args:
        value: The candidate id.
        what: What it is ("fleet", "device id"), used in the error message.

    Raises:
        MessageError: If ``value`` is not a string of 1-64 characters ``[A-Za-z0-9_.-]``.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise MessageError(f"invalid {what} {value!r}: expected {_ID_EXPECTED}")
    return value


# --- field checking -----------------------------------------------------------------------------
# Each spec maps to (expected-type text, checker). A checker returns the normalised value or None
# when the value does not fit; the caller turns that into one uniform error message.


def _is_int(v: object) -> bool:
    # bool is a subclass of int, but `true` is never a valid count.
    return isinstance(v, int) and not isinstance(v, bool)


def _as_float(v: object) -> float | None:
    if _is_int(v) or isinstance(v, float):
        f = float(v)  # type: ignore[arg-type]
        return f if math.isfinite(f) else None
    return None


_MISSING = object()


def _check_value(spec: str, v: Any) -> Any:
    """Return the normalised value, or ``_MISSING`` if ``v`` does not match ``spec``."""
    optional = spec.endswith("?")
    base = spec.rstrip("?")
    if v is None:
        return None if optional else _MISSING
    if base == "id":
        return v if isinstance(v, str) and _ID_RE.fullmatch(v) else _MISSING
    if base == "str":
        return v if isinstance(v, str) else _MISSING
    if base == "uint":
        return v if _is_int(v) and v >= 0 else _MISSING
    if base in ("float", "ufloat", "fraction"):
        f = _as_float(v)
        if f is None or (base != "float" and f < 0) or (base == "fraction" and f > 1):
            return _MISSING
        return f
    if base == "labels":
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            return tuple(v)
        return _MISSING
    if base == "reason":
        return v if v in _REASONS else _MISSING
    raise AssertionError(f"unknown field spec {spec!r}")  # a programming error, not bad input


_EXPECTED = {
    "id": _ID_EXPECTED,
    "str": "a string",
    "uint": "a non-negative integer",
    "float": "a finite number",
    "ufloat": "a finite non-negative number",
    "fraction": "a number between 0 and 1",
    "labels": "a list of strings",
    "reason": "one of 'graceful', 'lost'",
}


def _expected(spec: str) -> str:
    text = _EXPECTED[spec.rstrip("?")]
    return f"{text} or null" if spec.endswith("?") else text


def _describe(v: object) -> str:
    shown = repr(v)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(v).__name__} {shown}"


class _Validated:
    """Mixin: validates and normalises fields against ``_SPEC`` after construction."""

    KIND: ClassVar[str]
    _SPEC: ClassVar[dict[str, str]]

    def __post_init__(self) -> None:
        for name, spec in self._SPEC.items():
            value = getattr(self, name)
            checked = _check_value(spec, value)
            if checked is _MISSING:
                raise MessageError(
                    f"{self.KIND} field '{name}': expected {_expected(spec)}, got {_describe(value)}"
                )
            # Frozen dataclass: normalising (int -> float, list -> tuple) needs object.__setattr__.
            object.__setattr__(self, name, checked)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of this message, including the schema version."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_payload(self) -> bytes:
        """Encode as compact UTF-8 JSON.

        Raises:
            MessageError: If the encoded message exceeds :data:`MAX_PAYLOAD_BYTES`.
        """
        data = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()
        if len(data) > MAX_PAYLOAD_BYTES:
            raise MessageError(
                f"{self.KIND} payload is {len(data)} bytes: expected at most {MAX_PAYLOAD_BYTES}"
            )
        return data


@dataclass(frozen=True)
class Birth(_Validated):
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
    """

    KIND: ClassVar[str] = "birth"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "ts": "ufloat",
        "model_version": "str?", "model_sha256": "str?", "backend": "str?", "board": "str?",
        "labels": "labels", "agent_version": "str",
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


@dataclass(frozen=True)
class Telemetry(_Validated):
    """Periodic metrics of one device.

    Attributes:
        device_id: Device id.
        fleet: Fleet id.
        session: Session id of the publishing connection (same as its birth).
        seq: 0 for the first telemetry of a reporter, +1 per message (not reset on reconnect).
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
    """

    KIND: ClassVar[str] = "telemetry"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "seq": "uint", "ts": "ufloat",
        "uptime_s": "ufloat", "model_version": "str?", "model_sha256": "str?",
        "labels": "labels", "n_classes": "uint", "inference_count": "uint",
        "latency_p50_ms": "ufloat?", "latency_p95_ms": "ufloat?", "rss_bytes": "uint",
        "accuracy": "fraction?", "evaluated": "uint",
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


@dataclass(frozen=True)
class Death(_Validated):
    """A device going away: graceful on ``stop()``, ``lost`` as the broker-sent Last Will.

    Attributes:
        device_id: Device id.
        fleet: Fleet id.
        session: Session id of the connection that ended; lets the monitor ignore stale deaths.
        ts: Unix seconds, or None in the Last Will (composed at connect time, sent later).
        reason: ``"graceful"`` or ``"lost"``.
    """

    KIND: ClassVar[str] = "death"
    _SPEC: ClassVar[dict[str, str]] = {
        "device_id": "id", "fleet": "id", "session": "uint", "ts": "ufloat?", "reason": "reason",
    }

    device_id: str
    fleet: str
    session: int
    ts: float | None
    reason: DeathReason


Message = Union[Birth, Telemetry, Death]

# The single registry of kinds: topic validation and decoding both read it.
MESSAGE_TYPES: dict[str, type[Birth] | type[Telemetry] | type[Death]] = {
    cls.KIND: cls for cls in (Birth, Telemetry, Death)
}
KINDS: tuple[str, ...] = tuple(MESSAGE_TYPES)


@dataclass(frozen=True)
class TopicParts:
    """The pieces of an ``edgemeta/v1/<fleet>/<device>/<kind>`` topic."""

    fleet: str
    device_id: str
    kind: str


def _check_kind(kind: object) -> str:
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"unknown message kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


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
        raise MessageError(f"topic must be a string, got {_describe(value)}")
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


def decode(kind: str, payload: bytes) -> Message:
    """Decode and validate one payload.

    Args:
        kind: Message kind, usually from :func:`parse_topic`.
        payload: Raw MQTT payload.

    Returns:
        A :class:`Birth`, :class:`Telemetry` or :class:`Death`. Unknown extra fields are ignored so
        that schema 1 can grow optional fields without breaking older monitors.

    Raises:
        MessageError: Naming what was wrong: unknown kind, oversized payload, not UTF-8 JSON, not
            an object, missing or unsupported schema version, missing or wrong-typed field.
    """
    cls = MESSAGE_TYPES[_check_kind(kind)]
    if not isinstance(payload, (bytes, bytearray)):
        raise MessageError(f"{kind} payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"{kind} payload is {len(payload)} bytes: expected at most {MAX_PAYLOAD_BYTES}"
        )
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise MessageError(f"{kind} payload is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MessageError(f"{kind} payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"{kind} payload must be a JSON object, got {type(obj).__name__}")
    version = obj.get("schema", _MISSING)
    if version is _MISSING:
        raise MessageError(f"{kind} payload has no 'schema' field: expected \"schema\": 1")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise MessageError(
            f"{kind} payload has unsupported schema version {version!r}: "
            f"expected {SCHEMA_VERSION}"
        )
    kwargs: dict[str, Any] = {}
    for name, spec in cls._SPEC.items():
        if name not in obj:
            raise MessageError(
                f"{kind} payload is missing field '{name}': expected {_expected(spec)}"
            )
        kwargs[name] = obj[name]
    return cls(**kwargs)  # __post_init__ type-checks every field
