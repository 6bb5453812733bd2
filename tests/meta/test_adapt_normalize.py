"""adapt's report scores prototypes as the board will: with unit-length embeddings if asked."""

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

import keras  # noqa: E402

from edgemeta.meta.adapt import prototype_vs_adapted  # noqa: E402


def identity_model() -> keras.Model:
    inputs = keras.Input(shape=(2,))
    layer = keras.layers.Dense(2, use_bias=False, kernel_initializer="identity")
    return keras.Model(inputs, layer(inputs))


def test_normalized_embeddings_change_the_nearest_prototype():
    model = identity_model()
    support = (np.array([[1.0, 0.0], [10.0, 10.0]], np.float32), np.array([0, 1]))
    # Nearer to class 1 in raw distance, nearer to class 0 in direction.
    query = (np.array([[9.0, 3.0]], np.float32), np.array([0]))
    assert prototype_vs_adapted(model, model, support, query) == (0.0, 0.0)
    assert prototype_vs_adapted(model, model, support, query, normalize=True) == (1.0, 1.0)
