"""FewShotClassifier on bad input: a clear EdgemetaError, and nothing learned is lost."""

from dataclasses import replace

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")  # to build the tiny real model

from edgemeta.bundle import read_bundle  # noqa: E402
from edgemeta.errors import BundleError, InputError  # noqa: E402
from edgemeta.runtime import FewShotClassifier  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402


def _glyph() -> np.ndarray:
    img = np.full((28, 28), 255, np.uint8)
    img[4:24, 12:16] = 0
    return img


def test_manifest_embedding_dim_that_the_model_does_not_produce_is_a_bundle_error():
    """Before, the bundle loaded and every enroll failed with a misleading InputError about the
    shape of the user's embeddings."""
    bundle = read_bundle(tiny_bundle_path())
    dim = bundle.manifest.embedding_dim
    lying = replace(bundle, manifest=replace(bundle.manifest, embedding_dim=dim + 1))
    with pytest.raises(BundleError, match=f"{dim}.*{dim + 1}|{dim + 1}.*{dim}"):
        FewShotClassifier(lying)


def test_bad_calls_change_nothing():
    clf = FewShotClassifier(read_bundle(tiny_bundle_path()))
    with pytest.raises(InputError, match="no classes"):
        clf.classify([_glyph()])
    with pytest.raises(InputError, match="at least one image"):
        clf.enroll("a", [])
    with pytest.raises(InputError, match="one image"):
        clf.enroll("a", np.stack([_glyph()] * 3, axis=-1))  # one RGB image, not 28 images
    with pytest.raises(InputError, match="label"):
        clf.enroll("a\x00", [_glyph()])
    with pytest.raises(InputError, match="not enrolled"):
        clf.forget("a")
    assert clf.labels == [] and clf.store.examples.labels == []
    assert clf.enroll("a", [_glyph()]) == 1
    assert [p.label for p in clf.classify([_glyph()])] == ["a"]
