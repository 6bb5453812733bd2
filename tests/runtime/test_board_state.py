"""What a board learned belongs to one model: an update never mixes or loses it, rollback restores it."""

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.bundle import BoardHome, init_home, pack_bundle, read_bundle  # noqa: E402
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


def test_update_relearns_classes_and_rollback_restores_old_prototypes(tmp_path):
    home = tmp_path / "home"
    init_home(home, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{home}")
    img = np.full((28, 28), 255, np.uint8)
    img[4:24, 12:16] = 0
    clf = FewShotClassifier.load(home)
    clf.enroll("bar", [img, np.rot90(img)])
    clf.save()
    before = clf.store.mean("bar")
    result = flash(_v2(tmp_path), f"dir:{home}")
    assert result.migration.relearned == ("bar",) and result.migration.source == "1.0.0"
    v2 = FewShotClassifier.load(home)
    # Re-learned in the new model's own embedding space, from the kept examples.
    assert v2.manifest.version == "2.0.0" and v2.labels == ["bar"] and v2.store.count("bar") == 2
    np.testing.assert_allclose(v2.store.mean("bar"), v2.embed([img, np.rot90(img)]).mean(0),
                               atol=1e-5)
    v2.enroll("other", [img])
    v2.save()
    assert rollback(home) == "1.0.0"
    restored = FewShotClassifier.load(home)
    assert restored.labels == ["bar"]  # the old model's own state, exactly as it was
    np.testing.assert_array_equal(restored.store.mean("bar"), before)


def test_damaged_pointer_is_a_bundle_error(tmp_path):
    home = tmp_path / "home"
    init_home(home, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{home}")
    (home / "current").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BundleError, match="current"):
        FewShotClassifier.load(home)
    (home / "current").write_text("../../etc\n")
    with pytest.raises(BundleError, match="damaged"):
        BoardHome.at(home).current_bundle()
