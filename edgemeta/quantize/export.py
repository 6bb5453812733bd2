"""Make a bundle from an int8 model: read its tensors, write the manifest, pack."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgemeta.bundle import InputSpec, Manifest, Preprocessing, Provenance, pack_bundle, sha256_hex
from edgemeta.errors import BundleError
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.embedder import input_details, output_details

__all__ = ["make_manifest", "export_bundle"]


def make_manifest(model: bytes, *, name: str, version: str, preprocessing: Preprocessing,
                  provenance: Provenance, distance: str = "squared_euclidean",
                  normalize_embeddings: bool = False,
                  test_time_shifts: tuple[tuple[int, int], ...] = ()) -> Manifest:
    """Describe an int8 model by reading its own input and output tensors."""
    interp = load_interpreter(model).interpreter
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
        provenance=provenance,
    )


def export_bundle(model: bytes, path: str | os.PathLike[str], **manifest_fields) -> Path:
    """``make_manifest`` + ``pack_bundle``; returns the bundle path."""
    manifest = make_manifest(model, **manifest_fields)
    return pack_bundle(manifest, model, path)
