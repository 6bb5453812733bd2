"""A minimal, read-only reader of the TFLite flatbuffer (``schema.fbs``), stdlib only.

Only the few fields the microcontroller export needs: operator codes, the first subgraph's
tensors (shape, type, quantization, whether they hold constant data), its operators and its
inputs/outputs. Written by hand rather than with the ``flatbuffers`` package or an interpreter so
that it runs on a board (no numpy, no TensorFlow) and so that a damaged file gives a clear error
instead of a crash inside generated code.

Flatbuffer layout in brief: every offset is little-endian; a table starts with an int32 pointing
(backwards) to its vtable; the vtable holds uint16 byte offsets of each field (0 = absent, use the
schema default); vectors and strings are a uint32 length followed by the elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgemeta.errors import BundleError

__all__ = [
    "BUILTIN_OPERATORS",
    "TENSOR_TYPES",
    "ModelInfo",
    "OperatorInfo",
    "TensorInfo",
    "parse_model",
]

# BuiltinOperator enum of schema.fbs, indexed by code (0..209, contiguous; append-only upstream).
BUILTIN_OPERATORS: tuple[str, ...] = tuple("""
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1
RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM
CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND
SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE
BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE
SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW
ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK
REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR
LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS
WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE
NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM
BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG
REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL
BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD
UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR
RIGHT_SHIFT STABLEHLO_LOGISTIC STABLEHLO_ADD STABLEHLO_DIVIDE STABLEHLO_MULTIPLY
STABLEHLO_MAXIMUM STABLEHLO_RESHAPE STABLEHLO_CLAMP STABLEHLO_CONCATENATE
STABLEHLO_BROADCAST_IN_DIM STABLEHLO_CONVOLUTION STABLEHLO_SLICE STABLEHLO_CUSTOM_CALL
STABLEHLO_REDUCE STABLEHLO_ABS STABLEHLO_AND STABLEHLO_COSINE STABLEHLO_EXPONENTIAL
STABLEHLO_FLOOR STABLEHLO_LOG STABLEHLO_MINIMUM STABLEHLO_NEGATE STABLEHLO_OR STABLEHLO_POWER
STABLEHLO_REMAINDER STABLEHLO_RSQRT STABLEHLO_SELECT STABLEHLO_SUBTRACT STABLEHLO_TANH
STABLEHLO_SCATTER STABLEHLO_COMPARE STABLEHLO_CONVERT STABLEHLO_DYNAMIC_SLICE
STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD STABLEHLO_IOTA STABLEHLO_DOT_GENERAL
STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT STABLEHLO_WHILE STABLEHLO_GATHER STABLEHLO_TRANSPOSE
DILATE STABLEHLO_RNG_BIT_GENERATOR REDUCE_WINDOW STABLEHLO_COMPOSITE STABLEHLO_SHIFT_LEFT
STABLEHLO_CBRT STABLEHLO_CASE
""".split())

# TensorType enum -> (name, bytes per element). Sub-byte types are rounded up: an overestimate.
TENSOR_TYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", 1), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 8),
    14: ("variant", 8), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 1), 18: ("bfloat16", 2),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the first subgraph.

    ``shape`` is what TFLite Micro allocates; ``shape_signature`` keeps ``-1`` for dynamic
    dimensions (empty when the model has none).
    """

    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: str
    itemsize: int
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    constant: bool  # holds data in the flatbuffer (weights), so it needs no arena space
    variable: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data at its static ``shape``."""
        n = self.itemsize
        for d in self.shape:
            n *= max(int(d), 0)
        return n


@dataclass(frozen=True)
class OperatorInfo:
    """One operator: its builtin name (or custom code) and tensor indices (-1: optional, absent)."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`parse_model` extracts from a ``.tflite`` flatbuffer."""

    version: int
    opcodes: tuple[str, ...]  # builtin names, or "CUSTOM:<code>" for custom ops
    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int | float:
        try:
            return struct.unpack_from(fmt, self.data, pos)[0]
        except struct.error:
            raise BundleError(f"model.tflite is truncated or not a TFLite flatbuffer: offset {pos} "
                              f"is outside its {len(self.data)} bytes") from None

    def u32(self, pos: int) -> int:
        return int(self._unpack("<I", pos))

    def field(self, table: int, index: int) -> int:
        """Absolute position of field ``index`` of the table at ``table``, or 0 if absent."""
        vtable = table - int(self._unpack("<i", table))
        vt_size = int(self._unpack("<H", vtable))
        slot = 4 + 2 * index
        if slot >= vt_size:
            return 0
        rel = int(self._unpack("<H", vtable + slot))
        return table + rel if rel else 0

    def scalar(self, table: int, index: int, fmt: str, default: int | float = 0) -> int | float:
        pos = self.field(table, index)
        return self._unpack(fmt, pos) if pos else default

    def indirect(self, table: int, index: int) -> int:
        """Position of the table/vector/string that field ``index`` points to, or 0."""
        pos = self.field(table, index)
        return pos + self.u32(pos) if pos else 0

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) if absent."""
        pos = self.indirect(table, index)
        if not pos:
            return 0, 0
        n = self.u32(pos)
        if pos + 4 + n > len(self.data):
            raise BundleError(f"model.tflite is damaged: a vector of {n} elements at offset {pos} "
                              "runs past the end of the file")
        return pos + 4, n

    def tables(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(n)]

    def scalars(self, table: int, index: int, fmt: str, size: int) -> tuple[int | float, ...]:
        start, n = self.vector(table, index)
        if not n:
            return ()
        try:
            return struct.unpack_from(f"<{n}{fmt}", self.data, start)
        except struct.error:
            raise BundleError("model.tflite is damaged: a vector runs past the end of the file") from None

    def string(self, table: int, index: int) -> str:
        start, n = self.vector(table, index)
        return self.data[start:start + n].decode("utf-8", "replace") if start else ""


def _opcode_name(r: _Reader, code_table: int) -> str:
    # Field 0 is the int8 deprecated_builtin_code (codes < 127), field 3 the int32 builtin_code
    # that replaced it; writers fill one or both, so the larger value is the real code.
    code = max(int(r.scalar(code_table, 0, "<b")), int(r.scalar(code_table, 3, "<i")))
    custom = r.string(code_table, 1)
    if custom:
        return f"CUSTOM:{custom}"
    if 0 <= code < len(BUILTIN_OPERATORS):
        return BUILTIN_OPERATORS[code]
    return f"BUILTIN_{code}"  # newer than this table: still listed, resolved by name later


def _tensor(r: _Reader, t: int, buffers: list[int]) -> TensorInfo:
    type_code = int(r.scalar(t, 1, "<b"))
    dtype, itemsize = TENSOR_TYPES.get(type_code, (f"type{type_code}", 8))
    buf = int(r.scalar(t, 2, "<I"))
    constant = False
    if 0 < buf < len(buffers):
        _, n = r.vector(buffers[buf], 0)
        # Models over 2 GB keep data outside the flatbuffer: Buffer.offset (field 1) > 1.
        constant = n > 0 or int(r.scalar(buffers[buf], 1, "<Q")) > 1
    q = r.indirect(t, 4)
    scales = tuple(float(v) for v in r.scalars(q, 2, "f", 4)) if q else ()
    zeros = tuple(int(v) for v in r.scalars(q, 3, "q", 8)) if q else ()
    return TensorInfo(
        name=r.string(t, 3),
        shape=tuple(int(v) for v in r.scalars(t, 0, "i", 4)),
        shape_signature=tuple(int(v) for v in r.scalars(t, 7, "i", 4)),
        dtype=dtype, itemsize=itemsize, scales=scales, zero_points=zeros, constant=constant,
        variable=bool(r.scalar(t, 5, "<B")),
    )


def parse_model(data: bytes) -> ModelInfo:
    """Parse the parts of a ``.tflite`` flatbuffer that an MCU export needs.

    Args:
        data: The model bytes (``model.tflite`` of a bundle).

    Returns:
        A :class:`ModelInfo` of the first (main) subgraph.

    Raises:
        BundleError: the bytes are not a TFLite flatbuffer (no ``TFL3`` identifier), are
            truncated, or have no subgraph.
    """
    data = bytes(data)
    if len(data) < 8 or data[4:8] != b"TFL3":
        head = data[4:8] if len(data) >= 8 else data[:8]
        raise BundleError(f"model.tflite is not a TFLite flatbuffer: file identifier {head!r}, "
                          "expected b'TFL3'")
    r = _Reader(data)
    root = r.u32(0)
    opcodes = tuple(_opcode_name(r, c) for c in r.tables(root, 1))
    subgraphs = r.tables(root, 2)
    if not subgraphs:
        raise BundleError("model.tflite has no subgraph; expected one main graph")
    buffers = r.tables(root, 4)
    g = subgraphs[0]
    tensors = tuple(_tensor(r, t, buffers) for t in r.tables(g, 0))
    operators = []
    for op in r.tables(g, 3):
        index = int(r.scalar(op, 0, "<I"))
        if index >= len(opcodes):
            raise BundleError(f"model.tflite is damaged: an operator uses opcode {index} of "
                              f"{len(opcodes)}")
        operators.append(OperatorInfo(opcodes[index],
                                      tuple(int(v) for v in r.scalars(op, 1, "i", 4)),
                                      tuple(int(v) for v in r.scalars(op, 2, "i", 4))))
    return ModelInfo(
        version=int(r.scalar(root, 0, "<I")), opcodes=opcodes, tensors=tensors,
        operators=tuple(operators), inputs=tuple(int(v) for v in r.scalars(g, 1, "i", 4)),
        outputs=tuple(int(v) for v in r.scalars(g, 2, "i", 4)), subgraphs=len(subgraphs),
    )
