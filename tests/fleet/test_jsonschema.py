"""The shipped JSON Schemas: up to date with the code, and in agreement with the strict decoder."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgemeta.errors import MessageError
from edgemeta.fleet.jsonschema import SCHEMA_DIR, all_schemas
from edgemeta.fleet.schema import (
    Birth,
    Command,
    Death,
    HostState,
    Reply,
    Telemetry,
    decode,
    decode_host_state,
)

SAMPLES = {
    "birth": Birth("pi-01", "lab", 1700000000000, 1700000000.5, "1.2.0", "ab" * 32,
                   "ai_edge_litert", "rpi-4b", ("cat", "dog"), "0.1.0", bd_seq=3, seq=0),
    "telemetry": Telemetry("pi-01", "lab", 1700000000000, 7, 1700000010.0, 10.0, "1.2.0",
                           "ab" * 32, ("cat",), 1, 42, 0.8, 1.5, 37_000_000, 0.9, 10,
                           boot=1699999999000, n=41, dropped=2, replayed=True),
    "death": Death("pi-01", "lab", 1700000000000, None, "lost", bd_seq=3),
    "cmd": Command("c-1", "enroll", {"label": "cat", "images": []}, 1.0, "monitor-1"),
    "reply": Reply("c-1", "pi-01", "lab", 1700000000000, 9, 2.0, False, None, "label is empty"),
    "host": HostState("monitor-1", True, 3.0),
}


def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = all_schemas()[kind]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_shipped_files_are_what_the_code_generates():
    # python -m edgemeta.fleet.jsonschema rewrites them; this catches a forgotten rewrite.
    shipped = {p.name.removesuffix(".schema.json"): json.loads(p.read_text())
               for p in SCHEMA_DIR.glob("*.schema.json")}
    assert shipped == all_schemas()
    assert set(shipped) == set(SAMPLES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_encoded_message_validates(kind):
    payload = json.loads(SAMPLES[kind].to_payload())
    _validator(kind).validate(payload)


def _decodes(kind: str, obj: dict) -> bool:
    raw = json.dumps(obj).encode()
    try:
        if kind == "host":
            decode_host_state(f"edgemeta/v1/_host/{obj.get('host_id', 'x')}", raw)
        else:
            decode(kind, raw)
    except MessageError:
        return False
    return True


MUTATIONS = [
    ("telemetry", {"seq": 256}), ("telemetry", {"seq": -1}), ("telemetry", {"replayed": "yes"}),
    ("telemetry", {"accuracy": 1.5}), ("telemetry", {"labels": [1, 2]}), ("telemetry", {"n": 1.5}),
    ("birth", {"bd_seq": 300}), ("birth", {"device_id": "a/b"}), ("birth", {"schema": 1}),
    ("death", {"reason": "bored"}), ("death", {"seq": None}), ("death", {"ts": -1}),
    ("cmd", {"command": "format-disk"}), ("cmd", {"args": []}), ("cmd", {"id": ""}),
    ("reply", {"ok": 1}), ("reply", {"result": "done"}), ("reply", {"error": None}),
    ("host", {"online": "true"}), ("host", {"ts": None}),
]


@pytest.mark.parametrize("kind,change", MUTATIONS)
def test_schema_and_decoder_agree(kind, change):
    """The decoder accepts exactly what the shipped schema accepts, on valid and broken input."""
    obj = json.loads(SAMPLES[kind].to_payload())
    obj.update(change)
    by_schema = _validator(kind).is_valid(obj)
    assert _decodes(kind, obj) == by_schema, (kind, change, by_schema)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_missing_fields_are_rejected_by_both(kind):
    obj = json.loads(SAMPLES[kind].to_payload())
    for name in list(obj):
        broken = {k: v for k, v in obj.items() if k != name}
        assert not _validator(kind).is_valid(broken)
        assert not _decodes(kind, broken)
