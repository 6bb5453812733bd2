"""Schema: topics and payloads round-trip; every malformed input raises a useful MessageError."""

from __future__ import annotations

import json

import pytest

from edgemeta.errors import MessageError
from edgemeta.fleet import schema
from edgemeta.fleet.schema import (
    KINDS,
    MAX_PAYLOAD_BYTES,
    Birth,
    Death,
    Telemetry,
    TopicParts,
    decode,
    parse_topic,
    topic,
    topic_filter,
)


def make_birth(**kw: object) -> Birth:
    fields = dict(device_id="pi-01", fleet="lab", session=1700000000000, ts=1700000000.5,
                  model_version="1.2.0", model_sha256="ab" * 32, backend="ai_edge_litert",
                  board="rpi4", labels=["cat", "dog"], agent_version="0.1.0")
    fields.update(kw)
    return Birth(**fields)  # type: ignore[arg-type]


def make_telemetry(**kw: object) -> Telemetry:
    fields = dict(device_id="pi-01", fleet="lab", session=1700000000000, seq=3, ts=1700000010.0,
                  uptime_s=10.0, model_version="1.2.0", model_sha256="ab" * 32,
                  labels=["cat", "dog"], n_classes=2, inference_count=42, latency_p50_ms=0.8,
                  latency_p95_ms=1.5, rss_bytes=37_000_000, accuracy=0.9, evaluated=10)
    fields.update(kw)
    return Telemetry(**fields)  # type: ignore[arg-type]


def payload_of(msg: object, **changes: object) -> bytes:
    obj = msg.to_dict()  # type: ignore[attr-defined]
    obj.update(changes)
    return json.dumps(obj).encode()


# --- topics ---------------------------------------------------------------------------------------


def test_topic_round_trip_for_every_kind() -> None:
    for kind in KINDS:
        t = topic("lab", "pi-01", kind)
        assert t == f"edgemeta/v1/lab/pi-01/{kind}"
        assert parse_topic(t) == TopicParts(fleet="lab", device_id="pi-01", kind=kind)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("edgemeta/v2/lab/pi-01/birth", "not in the telemetry namespace"),
        ("edgemeta/v1/lab/pi-01", "not in the telemetry namespace"),
        ("edgemeta/v1/lab/pi-01/birth/extra", "not in the telemetry namespace"),
        ("other/v1/lab/pi-01/birth", "not in the telemetry namespace"),
        ("edgemeta/v1/lab/pi 01/birth", "invalid device id 'pi 01'"),
        ("edgemeta/v1//pi-01/birth", "invalid fleet ''"),
        ("edgemeta/v1/" + "f" * 65 + "/pi-01/birth", "invalid fleet"),
        ("edgemeta/v1/lab/pi-01/selfie", "unknown message kind 'selfie'"),
    ],
)
def test_parse_topic_rejects(bad: str, needle: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_topic(bad)
    assert needle in str(info.value)


def test_topic_validates_ids_and_kind() -> None:
    with pytest.raises(MessageError, match="invalid device id 'a/b'.*1-64 characters"):
        topic("lab", "a/b", "birth")
    with pytest.raises(MessageError, match="invalid fleet '\\+'"):
        topic("+", "pi", "birth")
    with pytest.raises(MessageError, match="unknown message kind 'ota'.*birth, telemetry, death, cmd, reply"):
        topic("lab", "pi", "ota")
    assert topic("a" * 64, "A.b_c-9", "death") == f"edgemeta/v1/{'a' * 64}/A.b_c-9/death"


def test_topic_filter_wildcards() -> None:
    assert topic_filter() == "edgemeta/v1/+/+/+"
    assert topic_filter("lab") == "edgemeta/v1/lab/+/+"
    with pytest.raises(MessageError, match="invalid fleet '#'"):
        topic_filter("#")


# --- payload round trips ----------------------------------------------------------------------


def test_birth_round_trip_and_schema_field() -> None:
    b = make_birth()
    data = b.to_payload()
    assert json.loads(data)["schema"] == 2
    assert decode("birth", data) == b
    assert b.labels == ("cat", "dog")  # stored immutable


def test_birth_with_no_model() -> None:
    b = make_birth(model_version=None, model_sha256=None, backend=None, board=None, labels=[])
    assert decode("birth", b.to_payload()) == b


def test_telemetry_round_trip_with_nulls() -> None:
    t = make_telemetry()
    assert decode("telemetry", t.to_payload()) == t
    t2 = make_telemetry(latency_p50_ms=None, latency_p95_ms=None, accuracy=None, evaluated=0)
    assert decode("telemetry", t2.to_payload()) == t2


def test_death_round_trip_both_reasons() -> None:
    will = Death("pi-01", "lab", 5, None, "lost")
    assert decode("death", will.to_payload()) == will
    bye = Death("pi-01", "lab", 5, 1700000000.0, "graceful")
    assert decode("death", bye.to_payload()) == bye


def test_integer_json_numbers_become_floats() -> None:
    data = payload_of(make_telemetry(), ts=1700000010, latency_p50_ms=1)
    t = decode("telemetry", data)
    assert isinstance(t.ts, float) and isinstance(t.latency_p50_ms, float)


def test_unknown_extra_fields_are_ignored() -> None:
    data = payload_of(make_birth(), future_field={"x": 1})
    assert decode("birth", data) == make_birth()


# --- malformed payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'"birth"', "must be a JSON object, got str"),
        (b'{"device_id": "x"}', "no 'schema' field"),
        (b'{"schema": 1}', "unsupported schema version 1: expected 2"),
        (b'{"schema": "1"}', "unsupported schema version '1'"),
        (b'{"schema": true}', "unsupported schema version True"),
    ],
)
def test_envelope_errors(payload: bytes, needle: str) -> None:
    with pytest.raises(MessageError) as info:
        decode("birth", payload)
    assert needle in str(info.value)


def test_missing_field_names_field_and_type() -> None:
    obj = make_telemetry().to_dict()
    del obj["rss_bytes"]
    with pytest.raises(MessageError, match="missing field 'rss_bytes': expected a non-negative"):
        decode("telemetry", json.dumps(obj).encode())


@pytest.mark.parametrize(
    ("kind", "field", "value", "needle"),
    [
        ("birth", "session", "123", "field 'session': expected a non-negative integer, got str"),
        ("birth", "session", True, "field 'session': expected a non-negative integer, got bool"),
        ("birth", "session", -1, "field 'session': expected a non-negative integer, got int -1"),
        ("birth", "ts", "now", "field 'ts': expected a finite non-negative number"),
        ("birth", "ts", None, "field 'ts': expected a finite non-negative number, got NoneType"),
        ("birth", "labels", "cat", "field 'labels': expected a list of strings, got str"),
        ("birth", "labels", ["cat", 3], "field 'labels': expected a list of strings"),
        ("birth", "model_version", 7, "field 'model_version': expected a string or null"),
        ("birth", "device_id", "bad id", "field 'device_id': expected 1-64 characters"),
        ("telemetry", "seq", 1.5, "field 'seq': expected an integer from 0 to 255, got float"),
        ("telemetry", "seq", 256, "field 'seq': expected an integer from 0 to 255, got int 256"),
        ("birth", "bd_seq", -1, "field 'bd_seq': expected an integer from 0 to 255"),
        ("telemetry", "replayed", 1, "field 'replayed': expected true or false, got int 1"),
        ("telemetry", "accuracy", 1.5, "field 'accuracy': expected a number between 0 and 1"),
        ("telemetry", "latency_p95_ms", "fast", "field 'latency_p95_ms': expected a finite"),
        ("telemetry", "rss_bytes", None, "field 'rss_bytes': expected a non-negative integer"),
        ("death", "reason", "crashed", "field 'reason': expected one of 'graceful', 'lost'"),
        ("death", "ts", "x", "field 'ts': expected a finite non-negative number or null"),
    ],
)
def test_wrong_typed_field(kind: str, field: str, value: object, needle: str) -> None:
    base = {"birth": make_birth(), "telemetry": make_telemetry(),
            "death": Death("pi-01", "lab", 1, None, "lost")}[kind]
    with pytest.raises(MessageError) as info:
        decode(kind, payload_of(base, **{field: value}))
    assert needle in str(info.value)
    assert kind in str(info.value)


def test_nan_is_rejected() -> None:
    data = payload_of(make_telemetry()).replace(b'"latency_p50_ms": 0.8', b'"latency_p50_ms": NaN')
    assert b"NaN" in data
    with pytest.raises(MessageError, match="NaN"):
        decode("telemetry", data)


def test_too_large_payload_rejected_on_decode_and_encode() -> None:
    big = b'{"schema": 2, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(MessageError, match=f"expected at most {MAX_PAYLOAD_BYTES}"):
        decode("birth", big)
    many = [f"label-{i:05d}" for i in range(8000)]
    with pytest.raises(MessageError, match="birth payload is .* bytes: expected at most"):
        make_birth(labels=many).to_payload()


def test_unknown_kind_and_non_bytes() -> None:
    with pytest.raises(MessageError, match="unknown message kind 'ota'"):
        decode("ota", b"{}")
    with pytest.raises(MessageError, match="payload must be bytes, got str"):
        decode("birth", "{}")  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(MessageError, match="telemetry field 'n_classes'"):
        make_telemetry(n_classes=-2)


def test_kind_registry_drives_everything() -> None:
    # Adding a kind is one table entry: KINDS, topic() and decode() all read MESSAGE_TYPES.
    assert set(KINDS) == {"birth", "telemetry", "death", "cmd", "reply"}
    assert all(cls.KIND == kind for kind, cls in schema.MESSAGE_TYPES.items())


@pytest.mark.parametrize("payload", [
    b"[" * 30000,                                   # RecursionError inside json (< 64 KiB)
    b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}",  # the same, inside an object
    b'{"schema":2,"n":' + b"1" * 5000 + b"}",       # ValueError: over-long integer
])
@pytest.mark.parametrize("kind", ["cmd", "birth", "telemetry"])
def test_hostile_json_is_a_message_error(kind: str, payload: bytes) -> None:
    assert len(payload) <= MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError, match=f"{kind} payload is n"):
        decode(kind, payload)


def test_nested_host_state_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="nested too deeply"):
        schema.decode_host_state(schema.host_topic("mon"), b"[" * 30000)
