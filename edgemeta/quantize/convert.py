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
from edgemeta.errors import ConfigError

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


def _input_shape(model: Any) -> tuple[Any, ...] | None:
    """The Keras model's single input shape with the batch dimension, or None if unknown."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    if len(inputs) != 1:
        raise ConfigError(f"int8 conversion needs a model with one image input, got {len(inputs)}")
    return tuple(inputs[0].shape)


def _check_calibration(model: Any, calibration: np.ndarray) -> None:
    """Refuse calibration data the board would never feed the model, before the slow convert."""
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"calibration images must be a non-empty (N, H, W, C) array, "
                          f"got shape {calibration.shape}")
    if calibration.dtype.kind != "f":
        # Raw uint8 pixels calibrate an input scale near 1.0 while the board quantises
        # preprocessed floats in [0, 1]: every board input would collapse to a few levels.
        raise ConfigError(f"calibration images must be float images from preprocess_batch(), "
                          f"got dtype {calibration.dtype}; preprocess raw pixels first")
    if not np.isfinite(calibration).all():
        raise ConfigError("calibration images must be finite; found NaN or infinity")
    shape = _input_shape(model)
    if shape is None:
        return
    if shape[0] is not None:
        # A fixed batch cannot be resized later ("XNNPack delegate failed to reshape runtime").
        raise ConfigError(f"model input batch dimension is fixed at {shape[0]}; build the model "
                          "with a dynamic (None) batch so the board can batch any number of images")
    if tuple(calibration.shape[1:]) != tuple(shape[1:]):
        want = "x".join(str(d) for d in shape[1:])
        got = "x".join(str(d) for d in calibration.shape[1:])
        raise ConfigError(f"calibration images are {got} but the model takes {want} images; "
                          "preprocess them with the bundle's preprocessing")


def _float_ops(model: bytes) -> list[str]:
    """Names of the ops of a converted model that compute in floating point."""
    from edgemeta.runtime.backends import load_interpreter

    interp = load_interpreter(model).interpreter
    kinds = {t["index"]: np.dtype(t["dtype"]).kind for t in interp.get_tensor_details()}
    ops = getattr(interp, "_get_ops_details", None)
    if ops is None:  # an interpreter without op details: any float tensor is one too many
        return ["?"] if "f" in kinds.values() else []
    found = []
    for op in ops():
        tensors = [*op["inputs"], *op["outputs"]]
        if any(kinds.get(int(i)) == "f" for i in tensors if int(i) >= 0):
            found.append(str(op["op_name"]))
    return found


def convert_int8(model: Any, calibration: np.ndarray) -> bytes:
    """Convert to a full-integer TFLite model with int8 input and output.

    Args:
        model: A Keras model with a dynamic batch dimension.
        calibration: Preprocessed float images (N, H, W, C) the model will see, for calibration.

    Returns:
        The .tflite flatbuffer; every op is a builtin int8 op, batch dimension still dynamic.

    Raises:
        ConfigError: The calibration images or the model's input do not fit, the converter
            failed, or an op would stay in float (the converter wraps ops without an int8 kernel
            in DEQUANTIZE/QUANTIZE and still reports int8 input and output).
    """
    tf = require("tensorflow", "TFLite conversion")
    calibration = np.asarray(calibration)
    _check_calibration(model, calibration)

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(len(calibration)):
            yield [calibration[i:i + 1].astype(np.float32)]

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    result = _run(converter, "int8")
    mixed = _float_ops(result)
    if mixed:
        raise ConfigError(f"int8 conversion left op(s) {', '.join(sorted(set(mixed)))} in float "
                          "(no int8 kernel); the board needs a full-integer model: replace those "
                          "layers with ones that have int8 TFLite kernels")
    return result


def _run(converter: Any, kind: str) -> bytes:
    """``converter.convert()`` with its TensorFlow errors turned into one-line ConfigErrors."""
    try:
        with _quiet():
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ConfigError(f"{kind} TFLite conversion failed: {exc.__class__.__name__}: "
                          f"{first}") from exc


def convert_float(model: Any) -> bytes:
    """Plain float32 TFLite conversion, for size and accuracy comparison.

    Raises:
        ConfigError: The converter failed.
    """
    return _run(_converter(model), "float")
