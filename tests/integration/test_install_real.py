"""Install with the real runtime: the health check (LiteRT loads the model and runs its self-test
vector) decides, and a model that fails it never becomes current."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgemeta.bundle import BoardHome, init_home, pack_bundle, read_bundle, sha256_hex
from edgemeta.errors import InstallError
from edgemeta.runtime import FewShotClassifier, health_check
from firmware_bridge import install_bundle

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "board"
    init_home(root, allow_unsigned=True)
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_shipped_bundle_passes_its_self_test():
    report = health_check(read_bundle(SHIPPED))
    assert report.ok and report.max_deviation is not None and report.max_deviation <= 2, report


def test_wrong_self_test_output_is_refused(tmp_path, home):
    install_bundle(SHIPPED, home)
    b = read_bundle(SHIPPED)
    expected = np.frombuffer(base64.b64decode(b.manifest.self_test.expected), np.int8)
    off = np.clip(expected.astype(np.int16) + 3, -128, 127).astype(np.int8)  # 3 LSB: beyond ±2
    bad = replace(b.manifest, version="9.0.0",
                  self_test=replace(b.manifest.self_test,
                                    expected=base64.b64encode(off.tobytes()).decode()))
    src = pack_bundle(bad, b.model, tmp_path / "bad.edgemeta")
    before = _snapshot(home)
    with pytest.raises(InstallError, match=r"health check of 9\.0\.0 failed: self-test output "
                       r"differs by up to 3 LSB.*stays current") as info:
        install_bundle(src, home)
    assert info.value.reason == "health-check"
    assert _snapshot(home) == before


def test_model_the_runtime_cannot_load_is_refused(tmp_path, home):
    install_bundle(SHIPPED, home)
    b = read_bundle(SHIPPED)
    model = b"TFL3" + bytes(1000)  # right manifest fields, not a flatbuffer
    m = replace(b.manifest, version="9.0.0", model_sha256=sha256_hex(model), model_bytes=len(model),
                self_test=None)
    src = pack_bundle(m, model, tmp_path / "garbage.edgemeta")
    before = _snapshot(home)
    with pytest.raises(InstallError, match="the runtime cannot load the model") as info:
        install_bundle(src, home)
    assert info.value.reason == "health-check" and _snapshot(home) == before
    assert BoardHome.at(home).current_version() == b.version


def test_update_keeps_enrolled_classes_in_the_new_space(tmp_path, home):
    """A real, different model (weights perturbed) re-learns the board's classes on install."""
    install_bundle(SHIPPED, home)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8) for c in ("a", "b", "c")}
    clf = FewShotClassifier.load(home)
    for label, imgs in images.items():
        clf.enroll(label, imgs)
    clf.save()
    all_images = np.concatenate(list(images.values()))
    before = clf.classify(all_images)
    b = read_bundle(SHIPPED)
    # Trailing bytes after the flatbuffer: a different file for the board, the same network.
    model = b.model + b"\0" * 64
    m = replace(b.manifest, version="2.0.0", model_sha256=sha256_hex(model), model_bytes=len(model))
    result = install_bundle(pack_bundle(m, model, tmp_path / "v2.edgemeta"), home)
    assert result.migration.relearned == ("a", "b", "c")
    new = FewShotClassifier.load(home)
    assert new.manifest.version == "2.0.0" and new.labels == ["a", "b", "c"]
    # Same network, so re-learning from the kept examples must give back the same prototypes.
    for label in images:
        np.testing.assert_allclose(new.store.mean(label), clf.store.mean(label), atol=1e-6)
    assert [p.label for p in new.classify(all_images)] == [p.label for p in before]


def test_board_rolls_back_at_start_when_current_model_cannot_run(tmp_path, home):
    from firmware_bridge.boot import start_classifier

    install_bundle(SHIPPED, home)
    b = read_bundle(SHIPPED)
    v2 = pack_bundle(replace(b.manifest, version="2.0.0"), b.model, tmp_path / "v2.edgemeta")
    install_bundle(v2, home)
    started = start_classifier(home)
    assert started.rolled_back is None and started.classifier.manifest.version == "2.0.0"
    # The card goes bad under the current model after it was installed.
    path = BoardHome.at(home).bundle_path("2.0.0")
    path.write_bytes(path.read_bytes()[:5000])
    started = start_classifier(home)
    assert started.classifier.manifest.version == b.version
    assert "rolled back from 2.0.0" in started.rolled_back and "truncated" in started.rolled_back
    assert BoardHome.at(home).current_version() == b.version


def test_start_without_any_working_model_says_so(tmp_path, home):
    from edgemeta.errors import BundleError
    from firmware_bridge.boot import start_classifier

    with pytest.raises(BundleError, match="no installed model"):
        start_classifier(home)
    install_bundle(SHIPPED, home)
    path = BoardHome.at(home).bundle_path(read_bundle(SHIPPED).version)
    path.write_bytes(b"junk")
    with pytest.raises(BundleError, match="cannot start.*rolling back failed"):
        start_classifier(home)
