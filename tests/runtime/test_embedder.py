"""Embedder edge cases: empty batches and raw pixels given where float images are expected."""

from dataclasses import replace

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")  # to build the tiny real model

from edgemeta.bundle import read_bundle  # noqa: E402
from edgemeta.errors import InputError  # noqa: E402
from edgemeta.runtime.embedder import Embedder  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402


@pytest.mark.parametrize("shifts", [(), ((1, 0), (0, -1))])
def test_empty_batch_gives_no_embeddings(shifts):
    bundle = read_bundle(tiny_bundle_path())
    emb = Embedder(replace(bundle, manifest=replace(bundle.manifest, test_time_shifts=shifts)))
    out = emb.embed(np.zeros((0, *emb.input_shape), np.float32))
    assert out.shape == (0, bundle.manifest.embedding_dim) and out.dtype == np.float32


def test_raw_uint8_pixels_are_refused():
    emb = Embedder(read_bundle(tiny_bundle_path()))
    with pytest.raises(InputError, match="preprocess"):
        emb.embed(np.full((2, *emb.input_shape), 255, np.uint8))
    assert emb.embed(np.zeros((2, *emb.input_shape), np.float32)).shape[0] == 2
