"""Field checking shared by every fleet message: one spec string per field, strict and uniform.

A spec is a type name, optionally ending in ``?`` for "or null". Each message class lists its
fields in ``_SPEC``; :class:`Validated` checks and normalises them after construction, and
:func:`edgemeta.fleet.jsonschema.json_schema` turns the same table into a JSON Schema, so the
documented schema and the code cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from typing import Any, ClassVar

from edgemeta.errors import MessageError

SCHEMA_VERSION = 2
# 64 KiB is far above a realistic message (a few hundred bytes plus labels) and keeps a hostile
# or buggy publisher from making the monitor parse megabytes.
MAX_PAYLOAD_BYTES = 64 * 1024

_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ID_EXPECTED = "1-64 characters from A-Z a-z 0-9 _ . -"
REASONS = ("graceful", "lost")
COMMANDS = ("enroll", "forget", "classify", "report", "rebirth", "rollback")


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


def is_int(v: object) -> bool:
    # bool is a subclass of int, but `true` is never a valid count.
    return isinstance(v, int) and not isinstance(v, bool)


def _as_float(v: object) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):  # is_int(v) or a float
        f = float(v)
        return f if math.isfinite(f) else None
    return None


MISSING = object()


def check_value(spec: str, v: Any) -> Any:
    """Return the normalised value, or ``MISSING`` if ``v`` does not match ``spec``."""
    optional = spec.endswith("?")
    base = spec.rstrip("?")
    if v is None:
        return None if optional else MISSING
    if base == "id":
        return v if isinstance(v, str) and _ID_RE.fullmatch(v) else MISSING
    if base == "str":
        return v if isinstance(v, str) else MISSING
    if base == "uint":
        return v if is_int(v) and v >= 0 else MISSING
    if base in ("float", "ufloat", "fraction"):
        f = _as_float(v)
        if f is None or (base != "float" and f < 0) or (base == "fraction" and f > 1):
            return MISSING
        return f
    if base == "labels":
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            return tuple(v)
        return MISSING
    if base == "reason":
        return v if v in REASONS else MISSING
    if base == "command":
        return v if v in COMMANDS else MISSING
    if base == "byte":
        return v if is_int(v) and 0 <= v <= 255 else MISSING
    if base == "bool":
        return v if isinstance(v, bool) else MISSING
    if base == "object":
        return v if isinstance(v, dict) and all(isinstance(k, str) for k in v) else MISSING
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
    "command": "one of " + ", ".join(repr(c) for c in COMMANDS),
    "byte": "an integer from 0 to 255",
    "bool": "true or false",
    "object": "a JSON object",
}


def expected(spec: str) -> str:
    text = _EXPECTED[spec.rstrip("?")]
    return f"{text} or null" if spec.endswith("?") else text


def describe(v: object) -> str:
    shown = repr(v)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(v).__name__} {shown}"


class Validated:
    """Mixin: validates and normalises fields against ``_SPEC`` after construction."""

    KIND: ClassVar[str]
    _SPEC: ClassVar[dict[str, str]]
    MAX_BYTES: ClassVar[int] = MAX_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        for name, spec in self._SPEC.items():
            value = getattr(self, name)
            checked = check_value(spec, value)
            if checked is MISSING:
                raise MessageError(
                    f"{self.KIND} field '{name}': expected {expected(spec)}, got {describe(value)}"
                )
            # Frozen dataclass: normalising (int -> float, list -> tuple) needs object.__setattr__.
            object.__setattr__(self, name, checked)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of this message, including the schema version."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for f in fields(self):  # type: ignore[arg-type]  # a mixin of dataclasses only
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_payload(self) -> bytes:
        """Encode as compact UTF-8 JSON.

        Raises:
            MessageError: If the encoded message exceeds :data:`MAX_PAYLOAD_BYTES`.
        """
        data = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()
        if len(data) > self.MAX_BYTES:
            raise MessageError(
                f"{self.KIND} payload is {len(data)} bytes: expected at most {self.MAX_BYTES}"
            )
        return data


