"""Embedding backbones (host only)."""

from __future__ import annotations

from typing import Any

from edgemeta._deps import require

__all__ = ["conv4"]


def conv4(input_shape: tuple[int, int, int] = (28, 28, 1), filters: int = 64, blocks: int = 4,
          name: str = "conv4") -> Any:
    """The Conv-4 backbone of Vinyals et al. / Snell et al.: ``blocks`` x [conv3x3, BN, ReLU, pool2].

    For 28x28 input and 4 blocks the output is 1x1xfilters, so the embedding has ``filters``
    dimensions (64 by default).
    Unit-length embeddings (``TrainConfig.normalize``) are applied outside the network, by the
    loss on the host and by the runtime on the board (``Manifest.normalize_embeddings``), so the
    int8 model stays all-integer. The batch dimension stays dynamic so the int8 model can run any
    batch size on the board.

    Returns:
        A ``keras.Model`` mapping (None, H, W, C) float images in [0, 1] to (None, D) embeddings.
    """
    keras = require("keras", "the Conv-4 backbone")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i in range(blocks):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    outputs = keras.layers.Flatten(name="embedding")(x)

    return keras.Model(inputs, outputs, name=name)
