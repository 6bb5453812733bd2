"""Shared fixtures: small fake bundles that need no TensorFlow."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np
import pytest

from edgemeta.bundle import InputSpec, Manifest, Preprocessing, Provenance, pack_bundle, sha256_hex


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip`` that fails instead of skipping in CI (env ``CI`` set).

    CI installs ``.[host,device,dev]``, so a missing TensorFlow or amqtt there is a broken
    install, never a reason to hide the tests that need it.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        why = reason or f"{name} is not importable ({e})"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must provide it", pytrace=False)
        pytest.skip(why, allow_module_level=True)
        raise  # unreachable: pytest.skip raises


def fake_manifest(model: bytes, version: str = "1.0.0", **kw) -> Manifest:
    return Manifest(
        name=kw.pop("name", "fake"), version=version, model_sha256=sha256_hex(model),
        model_bytes=len(model),
        input=InputSpec(shape=(None, 28, 28, 1), dtype="int8", scale=1 / 255, zero_point=-128,
                        preprocessing=Preprocessing()),
        embedding_dim=kw.pop("embedding_dim", 16), output_scale=0.05, output_zero_point=-128,
        provenance=Provenance(algorithm="protonet", n_way=5, k_shot=1, dataset="fake"), **kw)


@pytest.fixture
def fake_bundle(tmp_path):
    """A bundle around arbitrary bytes: enough for packing, reading and installing."""
    def make(version: str = "1.0.0", payload: bytes | None = None, name: str = "fake.edgemeta"):
        model = payload if payload is not None else b"TFL3" + np.random.default_rng(0).bytes(2000)
        return pack_bundle(fake_manifest(model, version), model, tmp_path / name)
    return make
