"""Manifests built by hand (no model needed: check_bundle reads only the manifest)."""

from __future__ import annotations

from typing import Callable

import pytest

from edgemeta.bundle import InputSpec, Manifest


def _manifest(model_bytes: int = 124 * 1024, *, dtype: str = "int8",
              shape: tuple[int | None, ...] = (None, 28, 28, 1), **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        name="digits", version="1.0.0", model_sha256="ab" * 32, model_bytes=model_bytes,
        input=InputSpec(shape=shape, dtype=dtype, scale=1 / 255, zero_point=-128),
        embedding_dim=64, output_scale=0.05, output_zero_point=0,
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


@pytest.fixture
def conv4_manifest() -> Callable[..., Manifest]:
    """conv4_manifest(model_bytes=..., dtype=..., shape=...) -> a Conv-4-like int8 manifest."""
    return _manifest
