"""Microcontroller export: a bundle's model as C source for TensorFlow Lite for Microcontrollers.

Microcontrollers (ESP32-S3, nRF52840, ...) have no Linux and no Python, so a bundle cannot be
flashed to them like to a Raspberry Pi. Instead :func:`export_c` writes ``<name>.h`` and
``<name>.cc``: the model bytes as an aligned array, the builtin ops to register on a
``tflite::MicroMutableOpResolver`` and the tensor-arena size, to be compiled into the firmware.

The bytes are the bundle's ``model.tflite`` unchanged, dynamic batch included: TFLite Micro
allocates every tensor from its stored ``shape`` (batch 1 as written by the converter) and never
reads ``shape_signature``, so no batch-1 rewrite is needed. This was checked by experiment with
the ``tflite-micro`` Python interpreter (same C++ kernels as the firmware library), which
:func:`verify_c_export` runs on the bytes parsed back from the written ``.cc``.

Board-side safe: stdlib and ``edgemeta.bundle`` only at import time; numpy, ``tflite_micro`` and
the LiteRT backends are imported by the functions that need them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemeta.bundle import atomic_write_bytes, read_bundle, sha256_hex
from edgemeta.errors import BundleError, FlashError
from firmware_bridge._tflite_schema import ModelInfo, TensorInfo, parse_model
from firmware_bridge.mcu_arena import (
    ARENA_MARGIN_FRACTION,
    ArenaSize,
    _captured_stderr,
    _tflm,
    arena_info,
    arena_size,
    estimate_arena,
    measure_arena,
    with_margin,
)

__all__ = [
    "ARENA_MARGIN_FRACTION",
    "ArenaSize",
    "McuExport",
    "McuVerification",
    "TensorSpec",
    "arena_info",
    "arena_size",
    "builtin_ops",
    "estimate_arena",
    "export_c",
    "measure_arena",
    "read_c_array",
    "resolver_method",
    "verify_c_export",
    "with_margin",
]

# Resolver methods whose spelling is not the CamelCase of the op name (MicroMutableOpResolver).
_RESOLVER_EXCEPTIONS = {
    "BATCH_MATMUL": "AddBatchMatMul",
    "CUMSUM": "AddCumSum",
    "PADV2": "AddPadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_C_KEYWORDS = frozenset("""
alignas alignof and asm auto bool break case catch char class const constexpr continue default
delete do double else enum explicit extern false float for friend goto if inline int long mutable
namespace new noexcept not nullptr operator or private protected public register return short
signed sizeof static struct switch template this throw true try typedef typename union unsigned
using virtual void volatile while
""".split())


@dataclass(frozen=True)
class TensorSpec:
    """Shape, type and quantization of a model input or output as TFLite Micro sees it."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @classmethod
    def of(cls, t: TensorInfo) -> "TensorSpec":
        return cls(t.shape, t.dtype, t.scales[0] if t.scales else 0.0,
                   t.zero_points[0] if t.zero_points else 0)


@dataclass(frozen=True)
class McuExport:
    """What :func:`export_c` wrote."""

    name: str
    header: Path
    source: Path
    model_bytes: bytes = field(repr=False)
    ops: tuple[str, ...]
    arena: ArenaSize
    input: TensorSpec
    output: TensorSpec
    sha256: str
    version: str

    @property
    def arena_bytes(self) -> int:
        return self.arena.bytes


@dataclass(frozen=True)
class McuVerification:
    """Result of running exported bytes under TFLite Micro and LiteRT on the same int8 inputs."""

    samples: int
    max_abs_diff: int  # in output LSB (quantization steps)
    tolerance: int
    arena_bytes: int
    backend: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


# --------------------------------------------------------------------------- ops and arena


def resolver_method(op: str) -> str:
    """The ``MicroMutableOpResolver`` method registering builtin ``op`` (``CONV_2D`` -> ``AddConv2D``).

    Same rule as TFLite Micro's resolver generator: each ``_``-separated part capitalised,
    parts starting with a digit upper-cased, plus the few methods spelled otherwise.
    """
    if op in _RESOLVER_EXCEPTIONS:
        return _RESOLVER_EXCEPTIONS[op]
    parts = [p for p in op.split("_") if p]
    return "Add" + "".join(p.upper() if not p[0].isalpha() else p[0] + p[1:].lower() for p in parts)


def builtin_ops(model_bytes: bytes) -> list[str]:
    """Builtin op names the model uses, in the order of its operator codes, without duplicates.

    Raises:
        BundleError: the bytes are not a TFLite flatbuffer, or the model has custom ops (TFLite
            Micro needs each registered by hand) or Flex (SELECT_TF_OPS) ops (never supported).
    """
    info = parse_model(model_bytes)
    custom = [c.split(":", 1)[1] for c in info.opcodes if c.startswith("CUSTOM:")]
    if custom:
        raise BundleError(f"the model uses custom or Flex ops {custom}; TFLite Micro runs builtin "
                          "ops only: convert with target_spec.supported_ops = [TFLITE_BUILTINS_INT8]")
    used = {op.op for op in info.operators}
    return [name for i, name in enumerate(info.opcodes) if name in used and name not in info.opcodes[:i]]


# --------------------------------------------------------------------------- C source


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _C_KEYWORDS \
            or name.startswith("__"):
        raise FlashError(f"export name {name!r} is not usable; expected a C identifier of 1-64 "
                         "letters, digits and '_' (not starting with a digit or '__', not a C++ "
                         "keyword), e.g. 'model_data'")
    return name


def _c_float(v: float) -> str:
    return f"{float(v)!r}f" if math.isfinite(v) else "0.0f"


def _c_string(text: str) -> str:
    """``text`` as the inside of a C string literal, printable ASCII only.

    Manifest fields are checked when a bundle is read, but the header must stay valid C (and a
    ``//`` comment must stay one line) for any text: everything else becomes a 3-digit octal
    escape of its UTF-8 bytes.
    """
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\?' else f"\\{byte:03o}")
    return "".join(out)


def _dims(shape: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(d) for d in shape) + "}"


def _header(name: str, model: bytes, info: ModelInfo, ops: list[str], arena: ArenaSize,
            inp: TensorSpec, out: TensorSpec, manifest: Any) -> str:
    p = name.upper()
    guard = f"EDGEMETA_{p}_H_"
    dynamic = any(d < 0 for d in info.tensors[info.inputs[0]].shape_signature)
    register = "".join(f"    (resolver).{resolver_method(op)}(); \\\n" for op in ops)
    lines = [
        f"// {name}.h: generated by `edgemeta export c`; do not edit.",
        f"// Model {_c_string(manifest.name)} {_c_string(manifest.version)}: {len(model):,} bytes, "
        f"sha256 {sha256_hex(model)}",
        "// (the bundle's model.tflite unchanged; check it against the bundle's manifest.json).",
        "// Runtime: TensorFlow Lite for Microcontrollers (tflite::MicroInterpreter).",
    ]
    if dynamic:
        lines.append("// The batch dimension is dynamic (-1) in shape_signature; TFLite Micro uses the "
                     "stored shape, batch 1.")
    lines += [
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        f"// The .tflite flatbuffer, 16-byte aligned, in flash (const). Length in bytes: g_{name}_len.",
        f"extern const unsigned char g_{name}[];",
        f"extern const unsigned int g_{name}_len;",
        "",
        f'#define {p}_MODEL_NAME "{_c_string(manifest.name)}"',
        f'#define {p}_VERSION "{_c_string(manifest.version)}"',
        f'#define {p}_SHA256 "{sha256_hex(model)}"',
        f"#define {p}_MODEL_BYTES {len(model)}",
        "",
        f"// Tensor arena: declare `alignas(16) static uint8_t arena[{p}_ARENA_SIZE];`.",
        f"// {arena.describe()}.",
        "// The margin covers the scratch buffers of optimized kernels (CMSIS-NN, ESP-NN) that the",
        "// reference kernels do not need; interpreter.arena_used_bytes() tells the real use.",
        f"#define {p}_ARENA_SIZE {arena.bytes}",
        f"#define {p}_ARENA_MEASURED {arena.raw_bytes if arena.method == 'measured' else 0}",
        "",
        f"// Input 0: {inp.dtype} {list(inp.shape)}; real = scale * (q - zero_point).",
        f"#define {p}_INPUT_SHAPE {_dims(inp.shape)}",
        f"#define {p}_INPUT_SCALE {_c_float(inp.scale)}",
        f"#define {p}_INPUT_ZERO_POINT ({inp.zero_point})",
        f"// Output 0: {out.dtype} {list(out.shape)}.",
        f"#define {p}_OUTPUT_SHAPE {_dims(out.shape)}",
        f"#define {p}_OUTPUT_SCALE {_c_float(out.scale)}",
        f"#define {p}_OUTPUT_ZERO_POINT ({out.zero_point})",
        "",
        f"// Builtin ops ({len(ops)}): {', '.join(ops)}.",
        f"//   tflite::MicroMutableOpResolver<{p}_OP_COUNT> resolver;",
        f"//   {p}_REGISTER_OPS(resolver);",
        f"#define {p}_OP_COUNT {len(ops)}",
        f"#define {p}_REGISTER_OPS(resolver) \\",
        "  do { \\",
    ]
    return "\n".join(lines) + "\n" + register + "  } while (0)\n\n" + f"#endif  // {guard}\n"


def _source(name: str, model: bytes) -> str:
    rows = []
    for i in range(0, len(model), 12):
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in model[i:i + 12]) + ",")
    return (
        f"// {name}.cc: generated by `edgemeta export c`; do not edit.\n"
        f'#include "{name}.h"\n\n'
        "// alignas(16): TFLite Micro reads tensors in place from the flatbuffer and expects its\n"
        "// buffers aligned; const keeps the array in flash instead of copying it to RAM.\n"
        f"alignas(16) const unsigned char g_{name}[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int g_{name}_len = {len(model)};\n"
    )


def read_c_array(cc_text: str, name: str = "model_data") -> bytes:
    """Parse the model bytes back from a ``.cc`` written by :func:`export_c`.

    Raises:
        FlashError: no ``g_<name>`` array, a bad byte, or a length that disagrees with
            ``g_<name>_len``.
    """
    body = re.search(rf"g_{re.escape(name)}\[\]\s*=\s*\{{(.*?)\}};", cc_text, re.S)
    length = re.search(rf"g_{re.escape(name)}_len\s*=\s*(\d+)\s*;", cc_text)
    if body is None or length is None:
        raise FlashError(f"no array g_{name}[] with g_{name}_len in the C source; expected a file "
                         "written by edgemeta export c")
    tokens = [t.strip() for t in body.group(1).split(",") if t.strip()]
    try:
        data = bytes(int(t, 16) for t in tokens)
    except ValueError as exc:
        raise FlashError(f"g_{name}[] holds a value that is not a byte ({exc})") from exc
    if len(data) != int(length.group(1)):
        raise FlashError(f"g_{name}[] has {len(data)} bytes but g_{name}_len says {length.group(1)}")
    return data


# --------------------------------------------------------------------------- export, verify


def _io_spec(info: ModelInfo) -> tuple[TensorSpec, TensorSpec]:
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise BundleError(f"the model has {len(info.inputs)} inputs and {len(info.outputs)} "
                          "outputs; expected exactly one of each")
    specs = []
    for which, index in (("input", info.inputs[0]), ("output", info.outputs[0])):
        t = info.tensors[index]
        # TFLite Micro cannot resize: every dimension of the stored shape must be concrete.
        if not t.shape or any(d < 1 for d in t.shape) or t.shape[0] != 1:
            raise BundleError(f"the model {which} shape is {list(t.shape)}; TFLite Micro needs a "
                              "static shape with batch 1, e.g. [1, 28, 28, 1]")
        specs.append(TensorSpec.of(t))
    return specs[0], specs[1]


def export_c(bundle_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
             name: str = "model_data", arena: str = "auto") -> McuExport:
    """Write ``<out_dir>/<name>.h`` and ``<name>.cc`` for TensorFlow Lite for Microcontrollers.

    Each file is replaced atomically, and only those two paths inside ``out_dir`` are written
    (``name`` must be a C identifier, so it cannot contain a path separator).

    Args:
        bundle_path: A ``.edgemeta`` bundle (verified on read).
        out_dir: Folder for the two files; created if missing.
        name: Base name of the files and of the symbols ``g_<name>``, ``g_<name>_len`` and the
            ``<NAME>_*`` macros.
        arena: How to size the arena: ``"auto"``, ``"measure"`` or ``"estimate"``
            (see :func:`arena_info`).

    Returns:
        An :class:`McuExport` describing what was written.

    Raises:
        BundleError: bad bundle, or a model TFLite Micro cannot run (custom ops, dynamic shapes,
            several inputs).
        FlashError: bad ``name``, ``out_dir`` is not a folder, or a file cannot be written.
        MissingDependencyError: ``arena="measure"`` without tflite-micro.
    """
    _check_name(name)
    bundle = read_bundle(bundle_path)
    model = bundle.model
    info = parse_model(model)
    inp, out = _io_spec(info)
    ops = builtin_ops(model)
    size = arena_info(model, arena)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise FlashError(f"export folder {root} is a file; expected a folder (or a path to create)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlashError(f"cannot create export folder {root}: {exc}") from exc
    # `name` is a C identifier (no separator, no '..'), so both paths are directly in `root`;
    # atomic_write_bytes renames over an existing symlink instead of writing through it.
    header, source = root / f"{name}.h", root / f"{name}.cc"
    texts = {header: _header(name, model, info, ops, size, inp, out, bundle.manifest),
             source: _source(name, model)}
    try:
        for path, text in texts.items():
            atomic_write_bytes(path, text.encode("ascii"))
    except OSError as exc:
        raise FlashError(f"cannot write the C export to {root}: {exc}") from exc
    return McuExport(name=name, header=header, source=source, model_bytes=model, ops=tuple(ops),
                     arena=size, input=inp, output=out, sha256=sha256_hex(model),
                     version=bundle.manifest.version)


def _header_macros(header: Path, name: str) -> tuple[int, str]:
    """(``<NAME>_ARENA_SIZE``, ``<NAME>_SHA256``) of a header written by :func:`export_c`."""
    try:
        text = header.read_text()
    except OSError as exc:
        raise FlashError(f"cannot read the export header {header}: {exc}") from exc
    p = name.upper()
    arena = re.search(rf"#define\s+{p}_ARENA_SIZE\s+(\d+)", text)
    digest = re.search(rf'#define\s+{p}_SHA256\s+"([0-9a-f]{{64}})"', text)
    if arena is None or digest is None:
        raise FlashError(f"{header} has no {p}_ARENA_SIZE or {p}_SHA256; expected a header "
                         "written by edgemeta export c")
    return int(arena.group(1)), digest.group(1)


def _inputs(spec: TensorSpec, samples: int, seed: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    blank = np.full(spec.shape, spec.zero_point, dtype=np.int8)  # an all-background image
    strokes = blank.copy()
    strokes.reshape(-1)[rng.choice(strokes.size, strokes.size // 8, replace=False)] = 127
    out = [blank, strokes]
    while len(out) < samples:
        out.append(rng.integers(-128, 128, spec.shape, dtype=np.int8))
    return out[:samples]


def verify_c_export(export: McuExport | str | os.PathLike[str], *, name: str | None = None,
                    samples: int = 4, seed: int = 0, tolerance: int = 2,
                    backend: str | None = None) -> McuVerification:
    """Run the exact bytes of an exported ``.cc`` under TFLite Micro and LiteRT and compare.

    The bytes are parsed back from the ``.cc`` file and must match the ``<NAME>_SHA256`` of the
    ``.h`` beside it; the arena is that header's ``<NAME>_ARENA_SIZE``, so the check covers what
    the firmware will compile. Inputs: a blank image, a sparse-stroke image and random int8
    tensors (seeded).

    Args:
        export: The :class:`McuExport` or the path of the ``.cc``.
        name: Symbol base name if ``export`` is a path (default: the file stem).
        samples: Number of inputs (at least 1).
        seed: Seed of the random inputs.
        tolerance: Largest allowed difference in output LSB (kernels round differently).
        backend: Force a LiteRT backend (see :func:`edgemeta.runtime.backends.load_interpreter`).

    Raises:
        FlashError: the files are not an edgemeta export, the bytes do not match the header's
            sha256, TFLite Micro fails with the exported arena, or an output differs by more than
            ``tolerance`` LSB.
        MissingDependencyError: tflite-micro or numpy is missing.
        BackendError: no LiteRT interpreter is installed.
    """
    import numpy as np

    from edgemeta.runtime.backends import load_interpreter

    cc = Path(export.source if isinstance(export, McuExport) else export)
    name = export.name if isinstance(export, McuExport) else (name or cc.stem)
    model = read_c_array(cc.read_text(), name)
    arena, digest = _header_macros(cc.with_suffix(".h"), name)
    if sha256_hex(model) != digest:
        # Both runtimes would agree on edited bytes too: integrity is checked separately.
        raise FlashError(f"the bytes in {cc} have sha256 {sha256_hex(model)}, but the header "
                         f"says {digest}: the .cc was edited or mixed up; re-export")
    inp, _ = _io_spec(parse_model(model))
    with _captured_stderr() as log:
        try:
            micro = _tflm(model, arena)
        except RuntimeError as exc:
            micro = exc
    if isinstance(micro, RuntimeError):
        raise FlashError(f"TFLite Micro cannot run {cc} with the exported arena of {arena:,} bytes "
                         f"({micro}: {' '.join(log[0].split())}); re-export")
    lite = load_interpreter(model, backend=backend)
    lite.interpreter.allocate_tensors()
    lin, lout = lite.interpreter.get_input_details()[0], lite.interpreter.get_output_details()[0]
    worst = 0
    for x in _inputs(inp, max(1, samples), seed):
        micro.set_input(x, 0)
        micro.invoke()
        a = np.asarray(micro.get_output(0)).astype(np.int32)
        lite.interpreter.set_tensor(lin["index"], x)
        lite.interpreter.invoke()
        b = lite.interpreter.get_tensor(lout["index"]).astype(np.int32)
        if a.shape != b.shape:
            raise FlashError(f"TFLite Micro output shape {a.shape} differs from LiteRT's {b.shape}")
        worst = max(worst, int(np.abs(a - b).max()))
    result = McuVerification(max(1, samples), worst, tolerance, arena, lite.backend)
    if not result.ok:
        raise FlashError(f"the exported model differs from {lite.backend} by {worst} LSB on "
                         f"int8 outputs; expected at most {tolerance}")
    return result
