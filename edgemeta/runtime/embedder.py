"""Run the int8 embedding network: quantise inputs, invoke in batches, dequantise outputs.

Small pure functions over an interpreter (in the spirit of pycoral's adapters) plus a thin class.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgemeta.bundle import Bundle
from edgemeta.errors import InputError
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.preprocess import quantize_input, shifted_views
from edgemeta.runtime.prototypes import l2_normalize

__all__ = ["Embedder", "input_details", "output_details", "set_batch_size", "invoke_batch"]


def input_details(interpreter: Any) -> dict[str, Any]:
    """Details of the (single) input tensor."""
    return interpreter.get_input_details()[0]


def output_details(interpreter: Any) -> dict[str, Any]:
    """Details of the (single) output tensor."""
    return interpreter.get_output_details()[0]


def set_batch_size(interpreter: Any, batch: int) -> None:
    """Resize the dynamic batch dimension of the input and re-allocate, if it changed."""
    detail = input_details(interpreter)
    if int(detail["shape"][0]) == batch:
        return
    shape = [batch, *[int(d) for d in detail["shape"][1:]]]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()


def invoke_batch(interpreter: Any, x_q: np.ndarray) -> np.ndarray:
    """Run one batch of already quantised input; return the raw (integer) output copy."""
    set_batch_size(interpreter, x_q.shape[0])
    interpreter.set_tensor(input_details(interpreter)["index"], x_q)
    interpreter.invoke()
    return interpreter.get_tensor(output_details(interpreter)["index"]).copy()


class Embedder:
    """Embeds preprocessed float images with a bundle's int8 model.

    Attributes:
        backend: Name of the interpreter backend in use.
        last_invoke_s: Interpreter time of the last :meth:`embed` call, in seconds.
    """

    def __init__(self, bundle: Bundle, backend: str | None = None, num_threads: int = 1,
                 max_batch: int = 32) -> None:
        self.manifest = bundle.manifest
        loaded = load_interpreter(bundle.model, backend=backend, num_threads=num_threads)
        self.interpreter = loaded.interpreter
        self.backend = loaded.backend
        self.max_batch = max_batch
        self.interpreter.allocate_tensors()
        inp, out = input_details(self.interpreter), output_details(self.interpreter)
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.input_dtype = np.dtype(inp["dtype"])
        self.in_scale, self.in_zero = (float(v) for v in inp["quantization"])
        self.out_scale, self.out_zero = (float(v) for v in out["quantization"])
        self.last_invoke_s = 0.0

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embed a float32 batch (N, H, W, C) from :func:`preprocess_batch`; return (N, D) float32."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"model input must be a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {x.shape}"
            )
        if x.dtype.kind != "f":
            # Raw uint8 pixels would be quantised unscaled and saturate: garbage, silently.
            raise InputError(f"model input must be float images from preprocess_batch(), got "
                             f"dtype {x.dtype}; preprocess raw pixels first")
        shifts = self.manifest.test_time_shifts
        n = x.shape[0]
        if n == 0:
            self.last_invoke_s = 0.0
            return np.zeros((0, self.manifest.embedding_dim), dtype=np.float32)
        if shifts:
            x = shifted_views(x, ((0, 0), *shifts))
        chunks = []
        started = time.perf_counter()
        for start in range(0, x.shape[0], self.max_batch):
            part = x[start:start + self.max_batch]
            if self.input_dtype == np.float32:
                raw = invoke_batch(self.interpreter, part.astype(np.float32))
            else:
                q = quantize_input(part, self.in_scale, int(self.in_zero), self.input_dtype.name)
                raw = invoke_batch(self.interpreter, q)
            chunks.append(raw)
        self.last_invoke_s = time.perf_counter() - started
        raw = np.concatenate(chunks) if chunks else np.zeros((0, self.manifest.embedding_dim))
        if self.out_scale == 0.0:  # float output
            emb = raw.astype(np.float32)
        else:
            emb = (raw.astype(np.float32) - np.float32(self.out_zero)) * np.float32(self.out_scale)
        if shifts:
            emb = emb.reshape(len(shifts) + 1, n, -1).mean(axis=0)
        return l2_normalize(emb) if self.manifest.normalize_embeddings else emb
