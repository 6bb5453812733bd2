import pytest

from edgemeta.errors import BackendError
from edgemeta.runtime import BACKEND_ENV, available_backends, load_interpreter
from tests.conftest import require_module

require_module("tensorflow")  # to build a real model

from tests.host.tiny import tiny_bundle_path  # noqa: E402


def _model() -> bytes:
    from edgemeta.bundle import read_bundle

    return read_bundle(tiny_bundle_path()).model


def test_prefers_ai_edge_litert():
    assert available_backends()[0] == "ai_edge_litert"
    assert load_interpreter(_model()).backend == "ai_edge_litert"


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "tensorflow")
    assert load_interpreter(_model()).backend == "tensorflow"


def test_unknown_and_missing_backends_are_clear(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        load_interpreter(_model())
    monkeypatch.delenv(BACKEND_ENV)
    # tflite_runtime is not installed beside numpy 2 here: forcing it names the install command.
    with pytest.raises(BackendError, match="pip install tflite-runtime"):
        load_interpreter(_model(), backend="tflite_runtime")


def test_garbage_model_is_a_backend_error():
    with pytest.raises(BackendError, match="could not load the model"):
        load_interpreter(b"not a flatbuffer" * 10)


def test_tensorflow_and_litert_agree_bit_for_bit():
    import numpy as np

    from edgemeta.bundle import read_bundle
    from edgemeta.runtime import Embedder

    bundle = read_bundle(tiny_bundle_path())
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    a = Embedder(bundle, backend="ai_edge_litert").embed(x)
    b = Embedder(bundle, backend="tensorflow").embed(x)
    np.testing.assert_array_equal(a, b)
