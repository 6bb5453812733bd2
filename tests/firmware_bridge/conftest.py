"""Real bundles without TensorFlow: arbitrary bytes packed as model.tflite around a hand-made manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from edgemeta.runtime.health import HealthReport

from edgemeta.bundle import InputSpec, Manifest, init_home, pack_bundle, sha256_hex

MakeBundle = Callable[..., Path]


def fake_model(seed: int, size: int = 4096) -> bytes:
    """Deterministic bytes that look like a TFLite flatbuffer to a casual reader."""
    return b"TFL3" + bytes((seed * 31 + i * 7) % 256 for i in range(size))


def make_manifest(model: bytes, version: str, *, dtype: str = "int8", **overrides: object) -> Manifest:
    values: dict[str, object] = dict(
        name="digits",
        version=version,
        model_sha256=sha256_hex(model),
        model_bytes=len(model),
        input=InputSpec(shape=(None, 28, 28, 1), dtype=dtype, scale=1 / 255, zero_point=-128),
        embedding_dim=64,
        output_scale=0.05,
        output_zero_point=0,
        created_at="2024-01-01T00:00:00+00:00",
    )
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """Factory: make_bundle("1.0.0", seed=1) -> path of a packed, valid bundle."""

    def _make(version: str, seed: int = 1, size: int = 4096, name: str | None = None,
              **overrides: object) -> Path:
        model = fake_model(seed, size)
        out = tmp_path / "bundles" / (name or f"digits-{version}-{seed}.edgemeta")
        return pack_bundle(make_manifest(model, version, **overrides), model, out)

    return _make


@pytest.fixture(autouse=True)
def fake_model_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles here hold fake model bytes, which no interpreter loads: report them healthy.

    The real health check (LiteRT loading the model and running its self-test vector) is
    exercised with real models in tests/integration/test_install_real.py.
    """
    import firmware_bridge.install as install

    monkeypatch.setattr(install, "health_check", lambda bundle, backend=None: HealthReport(
        True, "fake model: not checked", "fake"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A board home that accepts unsigned bundles, with nothing installed.

    Signature checks are tested in test_fb_trust.py.
    """
    root = tmp_path / "board"
    init_home(root, allow_unsigned=True)
    return root


def _snapshot(root: Path) -> dict[str, bytes | None]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes | None]]:
    """snapshot(root): every file (with its bytes) and directory under root, to prove nothing changed."""
    return _snapshot


@pytest.fixture
def manifest_for() -> Callable[..., Manifest]:
    """manifest_for(model, version, **overrides) -> Manifest describing ``model``."""
    return make_manifest
