"""Full-integer int8 conversion of a Keras embedding network (host only).

Uses ``TFLiteConverter.from_keras_model``; ``from_concrete_functions`` with a Keras 3 model as the
trackable object silently produces a broken model (see docs/toolchain notes).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Iterator

import numpy as np

from edgemeta._deps import require
from edgemeta.errors import EdgemetaError

__all__ = ["convert_int8", "convert_float", "representative_sample"]


def representative_sample(x: np.ndarray, n: int = 300, seed: int = 0) -> np.ndarray:
    """A reproducible random subset of preprocessed training images for calibration."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
    return x[np.sort(idx)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The converter prints "Saved artifact at ..." to stdout on every call; keep the CLI readable.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # Full-integer conversion always warns that input statistics were not given; the
        # representative dataset provides them.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield


def _converter(model: Any) -> Any:
    tf = require("tensorflow", "TFLite conversion")
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert_int8(model: Any, calibration: np.ndarray) -> bytes:
    """Convert to a full-integer TFLite model with int8 input and output.

    Args:
        model: A Keras model with a dynamic batch dimension.
        calibration: Preprocessed float images (N, H, W, C) the model will see, for calibration.

    Returns:
        The .tflite flatbuffer; every op is a builtin int8 op, batch dimension still dynamic.
    """
    tf = require("tensorflow", "TFLite conversion")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise EdgemetaError(f"calibration images must be a non-empty (N, H, W, C) array, "
                            f"got shape {calibration.shape}")

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(len(calibration)):
            yield [calibration[i:i + 1].astype(np.float32)]

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with _quiet():
        return bytes(converter.convert())


def convert_float(model: Any) -> bytes:
    """Plain float32 TFLite conversion, for size and accuracy comparison."""
    converter = _converter(model)
    with _quiet():
        return bytes(converter.convert())


