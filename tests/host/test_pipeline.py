"""Host side with real TensorFlow: training learns, conversion is full-int8, report is honest."""

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.bundle import read_bundle  # noqa: E402
from edgemeta.runtime import FewShotClassifier, load_interpreter  # noqa: E402
from tests.host.tiny import tiny_bundle, tiny_run  # noqa: E402


def test_training_learns_above_chance():
    result, run_dir = tiny_run()
    hist = result.history
    assert hist[-1]["episode"] == 60
    # 5-way 1-shot chance is 20 %; a few dozen episodes on easy glyphs get far beyond it.
    assert hist[-1]["val_acc"] > 0.5, hist
    assert (run_dir / "model.keras").is_file() and (run_dir / "train_log.jsonl").is_file()


def test_int8_model_is_full_integer_with_dynamic_batch():
    _, path = tiny_bundle()
    bundle = read_bundle(path)
    interp = load_interpreter(bundle.model).interpreter
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape_signature"]) == [-1, 28, 28, 1]
    m = bundle.manifest
    assert m.input.dtype == "int8" and m.embedding_dim == 16
    assert m.provenance.algorithm == "protonet" and m.provenance.n_way == 5
    assert m.provenance.int8_accuracy is not None and m.provenance.float_accuracy is not None
    # Every op must be a builtin int8 kernel: only XNNPACK/builtin ops, no Flex ("FlexConv2D").
    assert b"Flex" not in bundle.model


def test_float_and_int8_agree_on_identical_episodes():
    report, _ = tiny_bundle()
    assert report.int8_accuracy.episodes == report.float_accuracy.episodes == 30
    assert report.int8_accuracy.mean > 0.4
    assert abs(report.drop_points) < 5.0
    assert report.float_bytes > 2 * report.int8_bytes


def test_classifier_batches_are_consistent():
    """Embedding N images at once equals embedding them one by one (dynamic batch resize)."""
    _, path = tiny_bundle()
    clf = FewShotClassifier.load(path)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 30, 30), dtype=np.uint8)
    together = clf.embed(imgs)
    single = np.concatenate([clf.embed(imgs[i:i + 1]) for i in range(len(imgs))])
    np.testing.assert_array_equal(together, single)


def test_magnitude_pruning_zeroes_kernels_and_still_converts():
    from edgemeta.quantize import convert_int8, kernel_sparsity, magnitude_prune

    result, _ = tiny_run()
    pruned = magnitude_prune(result.model, 0.5)
    assert kernel_sparsity(result.model) < 0.01
    assert abs(kernel_sparsity(pruned) - 0.5) < 0.01
    # The original is untouched and BatchNorm statistics are carried over.
    assert any((w != 0).all() for w in result.model.get_weights() if w.ndim == 4)
    x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    assert len(convert_int8(pruned, x)) > 0
    from edgemeta.errors import ConfigError
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_prune(result.model, 1.0)


def test_pruned_bundle_reports_the_unpruned_float_accuracy(tmp_path):
    """--prune ships the pruned model, and the report also scores the original on the same
    episodes, so that what pruning cost is visible (not only pruned float vs pruned int8)."""
    from edgemeta.bundle import Preprocessing
    from edgemeta.pipeline import DataSplit, bundle_run
    from edgemeta.quantize import kernel_sparsity

    result, _ = tiny_run()
    unpruned_report, _ = tiny_bundle()
    bundle, report = bundle_run(result.model, result.config, DataSplit("synthetic:40", 0.3, 0),
                                Preprocessing(), tmp_path / "p.edgemeta", name="p",
                                version="1.0.0", eval_episodes=30, prune=0.7)
    assert report.unpruned_accuracy is not None and unpruned_report.unpruned_accuracy is None
    # Same episodes and the same original model as the unpruned bundle's report.
    assert report.unpruned_accuracy == unpruned_report.float_accuracy
    assert report.pruning_drop_points == pytest.approx(
        100 * (report.unpruned_accuracy.mean - report.int8_accuracy.mean))
    assert any("before pruning" in line for line in report.lines())
    assert bundle.manifest.provenance.extra["prune"] == 0.7
    assert kernel_sparsity(result.model) < 0.01  # the caller's model is not pruned in place


def test_test_time_views_average_the_shifted_embeddings():
    """A manifest with test_time_shifts embeds the mean of the views, on the board and on the host."""
    from dataclasses import replace

    from edgemeta.bundle import Bundle
    from edgemeta.meta import embed_float
    from edgemeta.runtime import Embedder, shifted_views

    result, _ = tiny_run()
    _, path = tiny_bundle()
    plain = read_bundle(path)
    shifts = ((2, 0), (-2, 0), (0, 2), (0, -2))
    tta = Bundle(replace(plain.manifest, test_time_shifts=shifts), plain.model)
    x = np.random.default_rng(1).random((6, 28, 28, 1), dtype=np.float32)
    views = shifted_views(x, ((0, 0), *shifts))
    expected = Embedder(plain).embed(views).reshape(5, 6, -1).mean(axis=0)
    np.testing.assert_allclose(Embedder(tta).embed(x), expected, rtol=1e-6, atol=1e-6)
    host = embed_float(result.model, x, shifts=shifts)
    np.testing.assert_allclose(host, embed_float(result.model, views).reshape(5, 6, -1).mean(0),
                               rtol=1e-5, atol=1e-5)
