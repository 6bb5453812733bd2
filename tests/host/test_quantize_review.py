"""Review findings in edgemeta.quantize: conversion refuses mixed/float models and bad calibration
with an EdgemetaError, pruning hits exactly the asked sparsity on every kernel, and the report
shows what pruning cost. Tiny networks only: each conversion takes about a second."""

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

import keras  # noqa: E402

from edgemeta.errors import ConfigError, EdgemetaError  # noqa: E402
from edgemeta.quantize import (  # noqa: E402
    convert_int8,
    kernel_sparsity,
    magnitude_prune,
    representative_sample,
)


def _tiny(batch_size=None, channels=1):
    inp = keras.Input((8, 8, channels), batch_size=batch_size)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    return keras.Model(inp, keras.layers.Flatten()(x))


def _calibration(n=8, channels=1):
    return np.random.default_rng(0).random((n, 8, 8, channels), dtype=np.float32)


def _tensor_types(model_bytes):
    from edgemeta.runtime import load_interpreter

    interp = load_interpreter(model_bytes).interpreter
    return {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}


def test_tiny_model_converts_to_pure_int8():
    types = _tensor_types(convert_int8(_tiny(), _calibration()))
    assert np.dtype(np.float32) not in types and np.dtype(np.int8) in types


def test_op_without_int8_kernel_is_refused_not_silently_left_in_float():
    # SIN has no int8 kernel: the converter wraps it in DEQUANTIZE/QUANTIZE and still reports
    # int8 input and output, so the bundle check would accept a mixed model.
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3)(inp)
    x = keras.layers.Lambda(lambda t: keras.ops.sin(t))(x)
    model = keras.Model(inp, keras.layers.Flatten()(x))
    with pytest.raises(ConfigError, match="SIN"):
        convert_int8(model, _calibration())


def test_calibration_of_the_wrong_shape_is_an_edgemeta_error():
    with pytest.raises(EdgemetaError, match=r"8x8x1"):
        convert_int8(_tiny(channels=1), _calibration(channels=3))


def test_raw_pixel_calibration_is_refused():
    # uint8 pixels calibrate an input scale ~1.0 while the board feeds [0, 1] floats: garbage.
    raw = (np.random.default_rng(0).random((8, 8, 8, 1)) * 255).astype(np.uint8)
    with pytest.raises(ConfigError, match="float"):
        convert_int8(_tiny(), raw)
    bad = _calibration()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        convert_int8(_tiny(), bad)


def test_fixed_batch_model_is_refused_before_conversion():
    with pytest.raises(ConfigError, match="batch"):
        convert_int8(_tiny(batch_size=1), _calibration())


def test_converter_failure_is_an_edgemeta_error(monkeypatch):
    import tensorflow as tf

    class Broken:
        def __init__(self):
            self.optimizations = []
            self.target_spec = type("T", (), {"supported_ops": None})()

        def convert(self):
            raise RuntimeError("converter exploded")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model",
                        staticmethod(lambda model: Broken()))
    with pytest.raises(EdgemetaError, match="converter exploded"):
        convert_int8(_tiny(), _calibration())


def test_representative_sample_covers_every_class_of_a_sorted_dataset():
    # Datasets are stored class by class; a calibration set from the first rows only would be
    # one class. The sample must reach across the whole array.
    labels = np.repeat(np.arange(20), 10)
    x = labels.astype(np.float32).reshape(-1, 1, 1, 1)
    sample = representative_sample(x, 60, seed=0)
    assert len(sample) == 60 and len(np.unique(sample)) >= 15


def test_pruning_with_tied_magnitudes_hits_the_asked_sparsity():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(4, kernel_initializer="ones")(inp))
    pruned = magnitude_prune(model, 0.5)
    assert kernel_sparsity(pruned) == pytest.approx(0.5)


def test_pruning_reaches_frozen_kernels():
    model = _tiny()
    model.trainable = False
    pruned = magnitude_prune(model, 0.5)
    assert kernel_sparsity(pruned) == pytest.approx(0.5, abs=0.02)
    # BatchNorm statistics and the original model are untouched.
    assert kernel_sparsity(model) < 0.01
    for a, b in zip(model.get_weights(), pruned.get_weights()):
        if a.ndim == 1:
            np.testing.assert_array_equal(a, b)


def test_report_of_a_pruned_model_shows_what_pruning_cost():
    """Pruned float vs pruned int8 alone hides the pruning loss; the unpruned figure shows it."""
    from edgemeta.bundle import Bundle, Preprocessing
    from edgemeta.data import EpisodeSampler
    from edgemeta.meta import preprocess_dataset
    from edgemeta.pipeline import DataSplit, split_source
    from edgemeta.quantize import compare_float_int8, make_manifest
    from edgemeta.bundle import Provenance
    from tests.host.tiny import tiny_run

    result, _ = tiny_run()
    pruned = magnitude_prune(result.model, 0.9)
    train, test = split_source(DataSplit("synthetic:40", 0.3, 0))
    pre = Preprocessing()
    int8 = convert_int8(pruned, representative_sample(preprocess_dataset(train, pre), 64))
    bundle = Bundle(make_manifest(int8, name="p", version="1.0.0", preprocessing=pre,
                                  provenance=Provenance(algorithm="protonet", n_way=5, k_shot=2,
                                                        dataset="x", episodes=1)), int8)
    episodes = EpisodeSampler(test, 5, 1, 5, seed=7).take(20)
    report = compare_float_int8(pruned, preprocess_dataset(test, pre), bundle, test, episodes,
                                unpruned_model=result.model)
    assert report.unpruned_accuracy is not None and report.unpruned_accuracy.episodes == 20
    # 90 % sparsity without fine-tuning costs accuracy that float - int8 does not show.
    assert report.unpruned_accuracy.mean > report.float_accuracy.mean
    assert report.pruning_drop_points > report.drop_points
    assert any("before pruning" in line for line in report.lines())
    with pytest.raises(ConfigError, match="episode"):
        compare_float_int8(pruned, preprocess_dataset(test, pre), bundle, test, [])
