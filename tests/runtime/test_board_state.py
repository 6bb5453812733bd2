"""What a board learned belongs to one model: an update never mixes or loses it, rollback restores it."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgemeta.bundle import BoardHome, pack_bundle, read_bundle  # noqa: E402
from edgemeta.errors import BundleError  # noqa: E402
from edgemeta.runtime import FewShotClassifier  # noqa: E402
from firmware_bridge import flash, rollback  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402


def _v2(tmp_path):
    """The same weights repacked as 2.0.0 with a different model hash (a new model for the board)."""
    b = read_bundle(tiny_bundle_path())
    from dataclasses import replace

    from edgemeta.bundle import sha256_hex

    model = b.model + b"\0" * 16  # trailing bytes: a different file, same network
    m = replace(b.manifest, version="2.0.0", model_sha256=sha256_hex(model), model_bytes=len(model))
    return pack_bundle(m, model, tmp_path / "v2.edgemeta")


def test_update_and_rollback_keep_each_models_classes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    flash(tiny_bundle_path(), f"dir:{home}")
    img = np.full((28, 28), 255, np.uint8)
    img[4:24, 12:16] = 0
    clf = FewShotClassifier.load(home)
    clf.enroll("bar", [img])
    clf.save()
    flash(_v2(tmp_path), f"dir:{home}")
    v2 = FewShotClassifier.load(home)
    assert v2.manifest.version == "2.0.0" and v2.labels == []  # another embedding space
    v2.enroll("other", [img])
    v2.save()
    assert rollback(home) == "1.0.0"
    assert FewShotClassifier.load(home).labels == ["bar"]  # nothing learned with 1.0.0 was lost


def test_damaged_pointer_is_a_bundle_error(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    flash(tiny_bundle_path(), f"dir:{home}")
    (home / "current").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BundleError, match="current"):
        FewShotClassifier.load(home)
    (home / "current").write_text("../../etc\n")
    with pytest.raises(BundleError, match="damaged"):
        BoardHome.at(home).current_bundle()
