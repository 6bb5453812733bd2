"""JSON Schema (draft 2020-12) of every fleet message, generated from the same field table the
decoder checks against, and shipped as files in ``edgemeta/fleet/schemas/``.

Operators validate with any JSON Schema tool; a test keeps the shipped files equal to what
:func:`json_schema` generates and checks that the schema and the decoder agree.

    python -m edgemeta.fleet.jsonschema        # rewrite edgemeta/fleet/schemas/*.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemeta.fleet._fields import COMMANDS, REASONS, SCHEMA_VERSION, Validated
from edgemeta.fleet.schema import MESSAGE_TYPES, HostState

__all__ = ["SCHEMA_DIR", "all_schemas", "json_schema", "write_schemas"]

SCHEMA_DIR = Path(__file__).with_name("schemas")
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
_TYPES: dict[str, dict[str, Any]] = {
    "id": _ID,
    "str": {"type": "string"},
    "uint": {"type": "integer", "minimum": 0},
    "byte": {"type": "integer", "minimum": 0, "maximum": 255},
    "float": {"type": "number"},
    "ufloat": {"type": "number", "minimum": 0},
    "fraction": {"type": "number", "minimum": 0, "maximum": 1},
    "labels": {"type": "array", "items": {"type": "string"}},
    "reason": {"enum": list(REASONS)},
    "command": {"enum": list(COMMANDS)},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
}


def _field(spec: str) -> dict[str, Any]:
    base = dict(_TYPES[spec.rstrip("?")])
    if spec.endswith("?"):
        return {"anyOf": [base, {"type": "null"}]}
    return base


def json_schema(cls: type[Validated]) -> dict[str, Any]:
    """The JSON Schema of one message class."""
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    props: dict[str, Any] = {"schema": {"const": SCHEMA_VERSION}}
    props.update({name: _field(spec) for name, spec in cls._SPEC.items()})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edgemeta.dev/schemas/v{SCHEMA_VERSION}/{cls.KIND}.schema.json",
        "title": f"edgemeta {cls.KIND} (schema {SCHEMA_VERSION})",
        "description": doc,
        "type": "object",
        "required": ["schema", *cls._SPEC],
        "properties": props,
        # Unknown fields are allowed: a schema grows optional fields without breaking readers.
        "additionalProperties": True,
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """Schema of every kind, keyed by kind (``birth``, ``telemetry``, ..., ``host``)."""
    classes = [*MESSAGE_TYPES.values(), HostState]
    return {cls.KIND: json_schema(cls) for cls in classes}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``<kind>.schema.json`` files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, schema in all_schemas().items():
        path = directory / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_schemas():
        print(written)
