"""Make a bundle from an int8 model: read its tensors, write the manifest, pack."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.bundle import (
    InputSpec,
    Manifest,
    Preprocessing,
    Provenance,
    SelfTest,
    pack_bundle,
    sha256_hex,
)
from edgemeta.errors import BundleError
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.embedder import input_details, invoke_batch, output_details
from edgemeta.runtime.preprocess import quantize_input

__all__ = ["make_manifest", "make_self_test", "export_bundle"]


def make_self_test(interpreter: Any, x: np.ndarray | None = None, seed: int = 0) -> SelfTest:
    """Record the model's int8 output for one input, for the board's install-time health check.

    Args:
        interpreter: The int8 model's interpreter.
        x: One preprocessed float image (H, W, C) in [0, 1], e.g. a training image; default: a
            fixed smooth random pattern, which exercises every weight as well as a real image.
        seed: Seed of the default pattern.
    """
    inp = input_details(interpreter)
    shape = tuple(int(d) for d in inp["shape_signature"][1:])
    if x is None:
        rng = np.random.default_rng(seed)
        coarse = rng.random((max(shape[0] // 4, 1), max(shape[1] // 4, 1), shape[2]))
        x = np.kron(coarse, np.ones((4, 4, 1)))[:shape[0], :shape[1]]
        x = np.pad(x, [(0, shape[0] - x.shape[0]), (0, shape[1] - x.shape[1]), (0, 0)])
    x = np.asarray(x, dtype=np.float32).reshape(1, *shape)
    scale, zero = inp["quantization"]
    x_q = quantize_input(x, float(scale), int(zero), "int8")
    y = invoke_batch(interpreter, x_q)
    return SelfTest(input=base64.b64encode(x_q.tobytes()).decode(),
                    expected=base64.b64encode(y.astype(np.int8).tobytes()).decode())


def make_manifest(model: bytes, *, name: str, version: str, preprocessing: Preprocessing,
                  provenance: Provenance, distance: str = "squared_euclidean",
                  normalize_embeddings: bool = False,
                  test_time_shifts: tuple[tuple[int, int], ...] = (),
                  boards: tuple[str, ...] = (),
                  self_test_input: np.ndarray | None = None) -> Manifest:
    """Describe an int8 model by reading its own input and output tensors.

    Also records the self-test vector the board checks before making the model current (see
    :func:`make_self_test`; ``self_test_input`` is the image it uses).
    """
    interp = load_interpreter(model).interpreter
    interp.allocate_tensors()
    inp, out = input_details(interp), output_details(interp)
    signature = [int(d) for d in inp["shape_signature"]]
    if signature[0] != -1:
        raise BundleError(f"model input batch dimension is fixed at {signature[0]}; expected dynamic "
                          "(None) so the board can batch any number of images")
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    if np.dtype(inp["dtype"]) != np.int8 or np.dtype(out["dtype"]) != np.int8:
        raise BundleError(f"model has {np.dtype(inp['dtype'])} input and {np.dtype(out['dtype'])} "
                          "output; expected a full-integer int8 model")
    height, width, channels = signature[1:]
    if (height, width) != tuple(preprocessing.size) or channels != preprocessing.channels:
        raise BundleError(f"model input is {height}x{width}x{channels} but preprocessing makes "
                          f"{preprocessing.size[0]}x{preprocessing.size[1]}x{preprocessing.channels}")
    return Manifest(
        name=name,
        version=version,
        model_sha256=sha256_hex(model),
        model_bytes=len(model),
        input=InputSpec(shape=(None, height, width, channels), dtype="int8", scale=float(in_scale),
                        zero_point=int(in_zero), preprocessing=preprocessing),
        embedding_dim=int(out["shape_signature"][-1]),
        output_scale=float(out_scale),
        output_zero_point=int(out_zero),
        distance=distance,
        normalize_embeddings=normalize_embeddings,
        test_time_shifts=test_time_shifts,
        boards=tuple(boards),
        self_test=make_self_test(interp, self_test_input),
        provenance=provenance,
    )


def export_bundle(model: bytes, path: str | os.PathLike[str], *, signing_key: Any = None,
                  **manifest_fields: Any) -> Path:
    """``make_manifest`` + ``pack_bundle``; returns the bundle path.

    ``signing_key`` (a PEM private key path or a loaded key) signs the bundle at pack time.
    """
    manifest = make_manifest(model, **manifest_fields)
    return pack_bundle(manifest, model, path, signing_key=signing_key)
