"""Training-time augmentation on preprocessed batches (host only, inside the compiled step).

Random affine warps (rotation, scale, shear, translation) and stroke thickness changes, as a
different hand would draw the same character. The board never augments: it only embeds.
"""

from __future__ import annotations

import math
from typing import Any

from edgemeta._deps import require

__all__ = ["augment_images"]

tf = require("tensorflow", "augmentation")


def _affine(gen: Any, n: int, size: tuple[int, int]) -> Any:
    """(n, 8) projective transforms (output -> input pixel mapping) around the image centre."""
    h, w = float(size[0]), float(size[1])
    rot = gen.uniform((n,), -math.radians(15), math.radians(15))
    shear = gen.uniform((n,), -0.2, 0.2)
    scale = tf.exp(gen.uniform((n,), math.log(0.85), math.log(1.15)))
    tx = gen.uniform((n,), -0.08, 0.08) * w
    ty = gen.uniform((n,), -0.08, 0.08) * h
    cos, sin = tf.cos(rot) / scale, tf.sin(rot) / scale
    a0, a1 = cos, -sin + shear * cos
    b0, b1 = sin, cos + shear * sin
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros((n,))
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_images(x: Any, gen: Any) -> Any:
    """Augment a float batch (N, H, W, C) of ink-bright-on-dark images with ``tf.random.Generator``.

    Each image is warped by its own random affine transform; a third get thicker strokes
    (3x3 max filter) and a third thinner ones (3x3 min filter).
    """
    n = tf.shape(x)[0]
    size = (x.shape[1], x.shape[2])
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=_affine(gen, n, size), output_shape=tf.constant(size, tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    thick = tf.nn.max_pool2d(warped, 3, 1, "SAME")
    # A full 3x3 erosion would erase 2-pixel strokes at 28x28: blend it in halfway.
    thin = 0.5 * (warped - tf.nn.max_pool2d(-warped, 3, 1, "SAME"))
    choice = gen.uniform((n, 1, 1, 1))
    out = tf.where(choice < 1 / 3, thick, tf.where(choice < 2 / 3, thin, warped))
    return tf.reshape(out, tf.shape(x))
