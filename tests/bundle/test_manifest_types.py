"""Manifest fields of the wrong type or out of range are refused with a BundleError naming them.

A manifest is input from outside (a file someone packed, maybe by hand): a wrong type must never
be coerced into something that silently changes what the board computes, nor escape as a
non-edgemeta exception.
"""

import json

import pytest

from edgemeta.bundle import Manifest, Preprocessing
from edgemeta.errors import BundleError
from tests.conftest import fake_manifest


def _m() -> dict:
    return json.loads(fake_manifest(b"abc").to_json())


def _with_input(**kw) -> dict:
    m = _m()
    m["input"] = {**m["input"], **kw}
    return m


def _with_pre(**kw) -> dict:
    m = _m()
    m["input"]["preprocessing"] = {**m["input"]["preprocessing"], **kw}
    return m


@pytest.mark.parametrize("data, field", [
    ({**_m(), "normalize_embeddings": "false"}, "normalize_embeddings"),  # a truthy string
    ({**_m(), "embedding_dim": 16.5}, "embedding_dim"),
    ({**_m(), "embedding_dim": True}, "embedding_dim"),
    ({**_m(), "embedding_dim": "16"}, "embedding_dim"),
    ({**_m(), "model_bytes": "3"}, "model_bytes"),
    ({**_m(), "model_bytes": -1}, "model_bytes"),
    ({**_m(), "boards": "pico"}, "boards"),  # would be read as the boards 'p', 'i', 'c', 'o'
    ({**_m(), "test_time_shifts": [[1.5, 0]]}, "test_time_shifts"),
    ({**_m(), "schema_version": True}, "schema_version"),
    ({**_m(), "output_scale": "0.05"}, "output_scale"),
    ({**_m(), "name": "x\n#define EVIL 1"}, "name"),
    ({**_m(), "name": 7}, "name"),
    (_with_input(zero_point=1.5), "zero_point"),
    (_with_input(scale="0.1"), "scale"),
    (_with_input(dtype=8), "dtype"),
    (_with_input(shape=[None, 28.5, 28, 1]), "shape"),
    (_with_input(surprise=1), "surprise"),
    (_with_pre(invert="false"), "invert"),
    (_with_pre(scale=0), "scale"),
    (_with_pre(scale=-1.0), "scale"),
    (_with_pre(size=[28.5, 28]), "size"),
    (_with_pre(channels=True), "channels"),
])
def test_wrong_types_are_refused(data, field):
    with pytest.raises(BundleError, match=field):
        Manifest.from_dict(data)


@pytest.mark.parametrize("text", [
    # Python's json reads these non-standard constants; int(inf) raised OverflowError.
    json.dumps(_with_input(zero_point=float("inf"))),
    json.dumps({**_m(), "test_time_shifts": [[float("inf"), 0]]}),
    json.dumps({**_m(), "embedding_dim": float("nan")}),
    json.dumps(_m()).replace('"embedding_dim": 16', '"embedding_dim": 1e999'),
    "[" * 100_000 + "]" * 100_000,  # RecursionError in the JSON decoder
])
def test_hostile_json_is_a_bundle_error(text):
    with pytest.raises(BundleError):
        Manifest.from_json(text)


def test_valid_manifest_still_round_trips_and_python_types_are_normalised():
    import numpy as np

    m = fake_manifest(b"abc", boards=["rpi-4b"], test_time_shifts=[[1, 0]],
                      embedding_dim=np.int64(16))
    assert m.boards == ("rpi-4b",) and m.test_time_shifts == ((1, 0),)
    assert type(m.embedding_dim) is int
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert Preprocessing(size=[32, 32]).size == (32, 32)
