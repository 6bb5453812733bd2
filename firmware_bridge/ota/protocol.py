"""Wire format of over-the-air flashing: topics, the offer, binary chunks and board status.

Topics live beside the telemetry ones, one level deeper so that telemetry subscribers
(``edgemeta/v1/<fleet>/+/+``) never receive bundle bytes::

    edgemeta/v1/<fleet>/<device>/ota/offer    host -> board, JSON, QoS 1
    edgemeta/v1/<fleet>/<device>/ota/chunk    host -> board, binary, QoS 1
    edgemeta/v1/<fleet>/<device>/ota/status   board -> host, JSON, QoS 1

Decoding is as strict as :mod:`edgemeta.fleet.schema`: the board listens on a broker where anything
can be published, so every field is type- and range-checked and a bad message raises
:class:`~edgemeta.errors.MessageError` naming what was wrong and what was expected.

A chunk is ``MAGIC (4) | format (1) | transfer id (16) | index (u32, big-endian) | SHA-256 of the
data (32) | data``. Board-side safe: stdlib, edgemeta.bundle and edgemeta.fleet.schema only.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from edgemeta.bundle.archive import MAX_BUNDLE_BYTES
from edgemeta.errors import MessageError
from edgemeta.fleet.schema import TOPIC_ROOT, load_json_payload, validate_id

# The over-the-air payloads are versioned on their own, independently of telemetry.
SCHEMA_VERSION = 1

__all__ = [
    "ACK_EVERY", "CHUNK_HEADER_BYTES", "CHUNK_MAGIC", "DEFAULT_CHUNK_BYTES", "FINAL_STATES",
    "MAX_CHUNKS", "MAX_CHUNK_BYTES", "MAX_OTA_BUNDLE_BYTES", "MAX_RANGES", "MIN_CHUNK_BYTES",
    "OTA_KINDS", "STATES",
    "Chunk", "Offer", "Status", "decode_chunk", "decode_offer", "decode_status", "encode_chunk",
    "new_transfer_id", "ota_filter", "ota_topic", "parse_ota_topic", "ranges_of",
]

OTA_KINDS = ("offer", "chunk", "status")
CHUNK_MAGIC = b"EMOC"
CHUNK_FORMAT = 1
_HEADER = struct.Struct(">4sB16sI32s")
CHUNK_HEADER_BYTES = _HEADER.size  # 57
# 64 KiB of data per chunk: small enough for a Pi Zero's memory and mosquitto's defaults, large
# enough that the 57-byte header and the per-message overhead stay below 0.1 %.
MAX_CHUNK_BYTES = 64 * 1024
DEFAULT_CHUNK_BYTES = MAX_CHUNK_BYTES
# An offer is bounded in chunks as well as bytes: the board keeps a bitmap of the chunks it holds
# and walks it to find what is missing, so tiny chunks (an offer of 256 MiB in 1-byte chunks would
# be 268 million of them) must not be able to exhaust a board's memory or CPU. Only the last chunk
# may be shorter than MIN_CHUNK_BYTES (and a bundle smaller than that travels as one chunk).
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNKS = 65_536
MAX_OTA_BUNDLE_BYTES = MAX_BUNDLE_BYTES
# The board acknowledges progress every ACK_EVERY chunks; a sender's window must be larger.
ACK_EVERY = 8
# A `need` lists at most this many missing ranges; the board asks for the rest once these arrive.
MAX_RANGES = 64
MAX_JSON_BYTES = 16 * 1024
STATES = ("need", "receiving", "installing", "installed", "failed", "rejected")
FINAL_STATES = ("installed", "failed", "rejected")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_REASON = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MAX_TEXT = 1000


def new_transfer_id() -> str:
    """A fresh random transfer id: 32 lowercase hex digits."""
    import secrets

    return secrets.token_hex(16)


# --- topics ---------------------------------------------------------------------------------------

def ota_topic(fleet: str, device: str, kind: str) -> str:
    """``edgemeta/v1/<fleet>/<device>/ota/<kind>``; MessageError on a bad id or kind."""
    validate_id(fleet, "fleet")
    validate_id(device, "device id")
    if kind not in OTA_KINDS:
        raise MessageError(f"unknown OTA kind {kind!r}: expected one of {', '.join(OTA_KINDS)}")
    return f"{TOPIC_ROOT}/{fleet}/{device}/ota/{kind}"


def ota_filter(fleet: str = "+", device: str = "+", kind: str = "+") -> str:
    """A subscription filter; each part an id/kind or ``+``."""
    if fleet != "+":
        validate_id(fleet, "fleet")
    if device != "+":
        validate_id(device, "device id")
    if kind != "+" and kind not in OTA_KINDS:
        raise MessageError(f"unknown OTA kind {kind!r}: expected one of {', '.join(OTA_KINDS)}")
    return f"{TOPIC_ROOT}/{fleet}/{device}/ota/{kind}"


def parse_ota_topic(value: object) -> tuple[str, str, str]:
    """Split an OTA topic into ``(fleet, device, kind)``; MessageError if it is not one."""
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) != 6 or "/".join(parts[:2]) != TOPIC_ROOT or parts[4] != "ota":
        raise MessageError(f"topic {value!r} is not an OTA topic: expected "
                           f"{TOPIC_ROOT}/<fleet>/<device>/ota/<kind>")
    if parts[5] not in OTA_KINDS:
        raise MessageError(f"unknown OTA kind {parts[5]!r}: expected one of {', '.join(OTA_KINDS)}")
    return validate_id(parts[2], "fleet"), validate_id(parts[3], "device id"), parts[5]


# --- JSON messages -------------------------------------------------------------------------------

def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _ranges_ok(v: object) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) <= MAX_RANGES
            and all(isinstance(r, (list, tuple)) and len(r) == 2 and _is_uint(r[0])
                    and _is_uint(r[1]) and r[0] < r[1] for r in v))


_CHECKS: dict[str, tuple[str, Any]] = {
    "id": ("1-64 characters from A-Z a-z 0-9 _ . -",
           lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v)),
    "tid": ("32 lowercase hex digits", lambda v: isinstance(v, str) and _HEX32.fullmatch(v)),
    "sha": ("64 lowercase hex digits", lambda v: isinstance(v, str) and _HEX64.fullmatch(v)),
    "uint": ("a non-negative integer", _is_uint),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "version": ("a bundle version like 1.2.0", lambda v: isinstance(v, str)
                and _VERSION.fullmatch(v) and ".." not in v),
    "state": (f"one of {', '.join(STATES)}", lambda v: v in STATES),
    "reason": ("a short code like disk-full",
               lambda v: isinstance(v, str) and _REASON.fullmatch(v)),
    "text": (f"a string of at most {_MAX_TEXT} characters",
             lambda v: isinstance(v, str) and len(v) <= _MAX_TEXT),
    "ranges": (f"a list of at most {MAX_RANGES} [start, end) pairs with start < end", _ranges_ok),
}


class _Message:
    KIND: ClassVar[str]
    _SPEC: ClassVar[dict[str, str]]

    def __post_init__(self) -> None:
        for name, spec in self._SPEC.items():
            value = getattr(self, name)
            if value is None and spec.endswith("?"):
                continue
            expected, ok = _CHECKS[spec.rstrip("?")]
            if not ok(value):
                shown = repr(value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise MessageError(f"OTA {self.KIND} field '{name}': expected {expected}"
                                   f"{' or null' if spec.endswith('?') else ''}, got {shown}")
            if spec.startswith("ranges"):
                object.__setattr__(self, name, tuple((int(a), int(b)) for a, b in value))
        self._check()

    def _check(self) -> None:
        """Cross-field checks of a subclass."""

    def to_payload(self) -> bytes:
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for f in fields(self):  # type: ignore[arg-type]  # a mixin of dataclasses only
            v = getattr(self, f.name)
            out[f.name] = [list(r) for r in v] if f.name == "need" else v
        return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


def _decode(cls: Any, payload: object) -> Any:
    kind = f"OTA {cls.KIND}"
    obj = load_json_payload(kind, payload, MAX_JSON_BYTES)
    if not isinstance(obj, dict):
        raise MessageError(f"{kind} payload must be a JSON object, got {type(obj).__name__}")
    if obj.get("schema") != SCHEMA_VERSION or isinstance(obj.get("schema"), bool):
        raise MessageError(f"{kind} payload has schema {obj.get('schema')!r}: expected "
                           f"{SCHEMA_VERSION}")
    missing = [n for n in cls._SPEC if n not in obj]
    if missing:
        raise MessageError(f"{kind} payload is missing field(s) {', '.join(missing)}")
    try:
        return cls(**{n: obj[n] for n in cls._SPEC})
    except RecursionError:  # checking (or describing) a value nested close to the limit
        raise MessageError(f"{kind} payload is nested too deeply: expected a flat JSON "
                           "object") from None


@dataclass(frozen=True)
class Offer(_Message):
    """Host -> board: "here comes this bundle"; the board answers with a status."""

    KIND: ClassVar[str] = "offer"
    _SPEC: ClassVar[dict[str, str]] = {
        "transfer_id": "tid", "fleet": "id", "device": "id", "bundle_sha256": "sha",
        "bundle_bytes": "uint", "chunk_bytes": "uint", "chunks": "uint", "version": "version",
        "allow_downgrade": "bool",
    }

    transfer_id: str
    fleet: str
    device: str
    bundle_sha256: str
    bundle_bytes: int
    chunk_bytes: int
    chunks: int
    version: str
    allow_downgrade: bool = False

    def _check(self) -> None:
        if not 0 < self.bundle_bytes <= MAX_OTA_BUNDLE_BYTES:
            raise MessageError(f"OTA offer bundle_bytes {self.bundle_bytes}: expected 1.."
                               f"{MAX_OTA_BUNDLE_BYTES}")
        smallest = min(MIN_CHUNK_BYTES, self.bundle_bytes)
        if not smallest <= self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise MessageError(f"OTA offer chunk_bytes {self.chunk_bytes}: expected {smallest}.."
                               f"{MAX_CHUNK_BYTES} (only a bundle smaller than "
                               f"{MIN_CHUNK_BYTES} bytes may travel in a smaller, single chunk)")
        expected = -(-self.bundle_bytes // self.chunk_bytes)
        if self.chunks != expected:
            raise MessageError(f"OTA offer chunks {self.chunks}: expected {expected} for "
                               f"{self.bundle_bytes} bytes in chunks of {self.chunk_bytes}")
        if self.chunks > MAX_CHUNKS:
            raise MessageError(f"OTA offer chunks {self.chunks}: expected at most {MAX_CHUNKS}; "
                               f"send {self.bundle_bytes} bytes in chunks of at least "
                               f"{-(-self.bundle_bytes // MAX_CHUNKS)} bytes")

    def chunk_size(self, index: int) -> int:
        """Exact data length of chunk ``index`` (the last one may be shorter)."""
        return min(self.chunk_bytes, self.bundle_bytes - index * self.chunk_bytes)


@dataclass(frozen=True)
class Status(_Message):
    """Board -> host: where a transfer stands.

    ``need`` lists missing ``[start, end)`` chunk ranges (state ``need``); ``received`` counts the
    chunks the board holds; ``current_version`` is the model that is current on the board now,
    so a failure report also says what stays in service.
    """

    KIND: ClassVar[str] = "status"
    _SPEC: ClassVar[dict[str, str]] = {
        "transfer_id": "tid", "fleet": "id", "device": "id", "state": "state", "need": "ranges",
        "received": "uint", "chunks": "uint", "version": "version?",
        "current_version": "version?", "previous_version": "version?", "changed": "bool",
        "reason": "reason?", "message": "text?", "rejected": "uint", "path": "text?",
    }

    transfer_id: str
    fleet: str
    device: str
    state: str
    need: tuple[tuple[int, int], ...] = ()
    received: int = 0
    chunks: int = 0
    version: str | None = None
    current_version: str | None = None
    previous_version: str | None = None
    changed: bool = False
    reason: str | None = None
    message: str | None = None
    rejected: int = 0
    path: str | None = None

    def _check(self) -> None:
        if self.chunks > MAX_CHUNKS or self.received > self.chunks:
            raise MessageError(f"OTA status received {self.received} of {self.chunks} chunks: "
                               f"expected received <= chunks <= {MAX_CHUNKS}")
        end = 0
        for a, b in self.need:
            if a < end or b > self.chunks:
                raise MessageError(f"OTA status field 'need': range [{a}, {b}) overlaps, is out "
                                   f"of order or ends beyond the {self.chunks} chunks")
            end = b

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def decode_offer(payload: object) -> Offer:
    """Decode and validate an offer; MessageError naming the bad field."""
    return _decode(Offer, payload)


def decode_status(payload: object) -> Status:
    """Decode and validate a status; MessageError naming the bad field."""
    return _decode(Status, payload)


def ranges_of(indices: "list[int] | range", limit: int = MAX_RANGES) -> list[tuple[int, int]]:
    """Sorted indices -> at most ``limit`` ``[start, end)`` ranges (the first ones)."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        elif len(out) == limit:
            break
        else:
            out.append((i, i + 1))
    return out


# --- binary chunks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    transfer_id: str
    index: int
    sha256: bytes
    data: bytes

    def verify(self) -> bool:
        """True when the data matches the SHA-256 carried with it."""
        return hashlib.sha256(self.data).digest() == self.sha256


def encode_chunk(transfer_id: str, index: int, data: bytes) -> bytes:
    """Binary chunk payload; MessageError on a bad id, index or size."""
    if not isinstance(transfer_id, str) or not _HEX32.fullmatch(transfer_id):
        raise MessageError(f"transfer id {transfer_id!r}: expected 32 lowercase hex digits")
    if not _is_uint(index) or index >= 2**32:
        raise MessageError(f"chunk index {index!r}: expected an integer in 0..2^32-1")
    if not 0 < len(data) <= MAX_CHUNK_BYTES:
        raise MessageError(f"chunk of {len(data)} bytes: expected 1..{MAX_CHUNK_BYTES}")
    return _HEADER.pack(CHUNK_MAGIC, CHUNK_FORMAT, bytes.fromhex(transfer_id), index,
                        hashlib.sha256(data).digest()) + bytes(data)


class ChunkError(MessageError):
    """A chunk payload that cannot be used; ``kind`` is ``malformed`` or ``oversized``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_chunk(payload: object) -> Chunk:
    """Parse a chunk payload (the SHA-256 is not checked here: see :meth:`Chunk.verify`).

    Raises:
        ChunkError: ``kind="oversized"`` above the cap, ``"malformed"`` for anything else.
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise ChunkError(f"chunk payload must be bytes, got {type(payload).__name__}", "malformed")
    if len(payload) > CHUNK_HEADER_BYTES + MAX_CHUNK_BYTES:
        raise ChunkError(f"chunk payload is {len(payload)} bytes: expected at most "
                         f"{CHUNK_HEADER_BYTES + MAX_CHUNK_BYTES}", "oversized")
    if len(payload) <= CHUNK_HEADER_BYTES:
        raise ChunkError(f"chunk payload is {len(payload)} bytes: expected a "
                         f"{CHUNK_HEADER_BYTES}-byte header and data", "malformed")
    magic, fmt, tid, index, digest = _HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC or fmt != CHUNK_FORMAT:
        raise ChunkError(f"chunk header {bytes(payload[:5])!r}: expected {CHUNK_MAGIC!r} format "
                         f"{CHUNK_FORMAT}", "malformed")
    return Chunk(tid.hex(), index, digest, bytes(payload[CHUNK_HEADER_BYTES:]))
