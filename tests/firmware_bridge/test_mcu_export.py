"""`export_c` without TFLite Micro: the C files' format, ops, names, out-dir safety, bad input.

The arena is estimated here (``arena="estimate"``) so these tests need neither tflite-micro nor
TensorFlow; tests/integration/test_mcu_export_tflm.py runs the exported bytes under TFLite Micro.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgemeta.bundle import pack_bundle, read_bundle
from edgemeta.errors import BundleError, FlashError
from firmware_bridge._tflite_schema import parse_model
from firmware_bridge.mcu import (
    builtin_ops,
    estimate_arena,
    export_c,
    read_c_array,
    resolver_method,
    with_margin,
)

REAL = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
OPS = ["CONV_2D", "MAX_POOL_2D", "SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"]
MEASURED_ARENA = 51_520  # tflite-micro 0.dev20261023182759 on this bundle (integration test)


@pytest.fixture(scope="module")
def real():
    return read_bundle(REAL)


def _macro(header: str, name: str) -> str:
    m = re.search(rf"^#define {name} (.+)$", header, re.M)
    assert m, f"{name} missing from header"
    return m.group(1)


def test_builtin_ops_and_resolver_methods(real):
    assert builtin_ops(real.model) == OPS
    assert [resolver_method(op) for op in OPS] == [
        "AddConv2D", "AddMaxPool2D", "AddShape", "AddStridedSlice", "AddPack", "AddReshape"]


@pytest.mark.parametrize(("op", "method"), [
    ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("L2_NORMALIZATION", "AddL2Normalization"), ("SPLIT_V", "AddSplitV"), ("PADV2", "AddPadV2"),
    ("BATCH_MATMUL", "AddBatchMatMul"), ("SPACE_TO_BATCH_ND", "AddSpaceToBatchNd"),
    ("RELU6", "AddRelu6"), ("UNIDIRECTIONAL_SEQUENCE_LSTM", "AddUnidirectionalSequenceLSTM"),
])
def test_resolver_method_spelling(op, method):
    assert resolver_method(op) == method


def test_parse_model_reads_dynamic_batch_and_quantization(real):
    info = parse_model(real.model)
    inp, out = info.tensors[info.inputs[0]], info.tensors[info.outputs[0]]
    assert (inp.shape, inp.shape_signature, inp.dtype) == ((1, 28, 28, 1), (-1, 28, 28, 1), "int8")
    assert inp.zero_points == (real.manifest.input.zero_point,)
    assert inp.scales[0] == pytest.approx(real.manifest.input.scale)
    assert out.shape == (1, real.manifest.embedding_dim) and out.scales[0] == pytest.approx(real.manifest.output_scale)
    assert sum(t.constant for t in info.tensors) == 11  # 4 x (weights, bias) + 3 shape constants


def test_export_writes_header_and_source(real, tmp_path):
    e = export_c(REAL, tmp_path / "out", arena="estimate")
    assert (e.header, e.source) == (tmp_path / "out" / "model_data.h", tmp_path / "out" / "model_data.cc")
    assert e.ops == tuple(OPS) and e.arena.method == "estimated"
    assert e.sha256 == real.manifest.model_sha256 and e.version == real.manifest.version
    header, source = e.header.read_text(), e.source.read_text()
    assert "extern const unsigned char g_model_data[];" in header
    assert "extern const unsigned int g_model_data_len;" in header
    assert int(_macro(header, "MODEL_DATA_ARENA_SIZE")) == e.arena_bytes
    assert int(_macro(header, "MODEL_DATA_ARENA_MEASURED")) == 0  # estimated, not measured
    assert "estimated from the flatbuffer" in header
    assert _macro(header, "MODEL_DATA_OP_COUNT") == "6"
    assert re.findall(r"\(resolver\)\.(Add\w+)\(\);", header) == [resolver_method(o) for o in OPS]
    assert _macro(header, "MODEL_DATA_INPUT_SHAPE") == "{1, 28, 28, 1}"
    assert _macro(header, "MODEL_DATA_OUTPUT_SHAPE") == f"{{1, {real.manifest.embedding_dim}}}"
    assert _macro(header, "MODEL_DATA_INPUT_ZERO_POINT") == "(-128)"
    assert float(_macro(header, "MODEL_DATA_OUTPUT_SCALE").rstrip("f")) == pytest.approx(
        real.manifest.output_scale)
    assert _macro(header, "MODEL_DATA_SHA256") == f'"{real.manifest.model_sha256}"'
    assert _macro(header, "MODEL_DATA_VERSION") == f'"{real.manifest.version}"'
    assert header.startswith("// model_data.h") and header.rstrip().endswith("EDGEMETA_MODEL_DATA_H_")
    assert "alignas(16) const unsigned char g_model_data[] = {" in source
    assert '#include "model_data.h"' in source
    assert read_c_array(source) == real.model  # the exact bundle bytes, unpatched
    assert header.isascii() and source.isascii()


def test_custom_name_names_files_symbols_and_macros(tmp_path):
    e = export_c(REAL, tmp_path, name="glyphs_v1", arena="estimate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyphs_v1.cc", "glyphs_v1.h"]
    header = e.header.read_text()
    assert "extern const unsigned char g_glyphs_v1[];" in header
    assert "#define GLYPHS_V1_REGISTER_OPS(resolver)" in header
    assert "#ifndef EDGEMETA_GLYPHS_V1_H_" in header
    assert read_c_array(e.source.read_text(), "glyphs_v1") == e.model_bytes


@pytest.mark.parametrize("name", ["", "1model", "../evil", "a/b", "model-data", "model data",
                                  "int", "class", "__reserved", "x" * 65, "mödel"])
def test_bad_names_are_refused_before_anything_is_written(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(FlashError, match="is not usable; expected a C identifier"):
        export_c(REAL, out, name=name, arena="estimate")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_writes_exactly_two_files_and_replaces_them(tmp_path):
    out = tmp_path / "fw" / "src"
    (tmp_path / "fw").mkdir()
    keep = tmp_path / "fw" / "main.cc"
    keep.write_text("int main() {}\n")
    out.mkdir()
    (out / "model_data.h").write_text("stale")
    export_c(REAL, out, arena="estimate")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == ["fw", "fw/main.cc", "fw/src", "fw/src/model_data.cc", "fw/src/model_data.h"]
    assert keep.read_text() == "int main() {}\n"
    assert (out / "model_data.h").read_text() != "stale"  # replaced, no temp files left


def test_symlinked_target_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.h"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_data.h").symlink_to(outside)
    export_c(REAL, out, arena="estimate")
    assert outside.read_text() == "precious"
    assert not (out / "model_data.h").is_symlink()
    assert "g_model_data" in (out / "model_data.h").read_text()


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(FlashError, match="is a file; expected a folder"):
        export_c(REAL, target, arena="estimate")
    assert target.read_text() == "x"


def test_missing_and_damaged_bundles_are_bundle_errors(tmp_path, manifest_for):
    with pytest.raises(BundleError, match="does not exist"):
        export_c(tmp_path / "nope.edgemeta", tmp_path / "out", arena="estimate")
    junk = b"TFL3" + bytes(range(256)) * 8  # a valid bundle whose model is not a flatbuffer
    path = pack_bundle(manifest_for(junk, "1.0.0"), junk, tmp_path / "junk.edgemeta")
    with pytest.raises(BundleError, match="not a TFLite flatbuffer"):
        export_c(path, tmp_path / "out", arena="estimate")
    assert not (tmp_path / "out").exists()


def test_truncated_flatbuffer_is_a_bundle_error(real):
    with pytest.raises(BundleError, match="truncated|damaged"):
        parse_model(real.model[:4096])


def test_read_c_array_rejects_foreign_or_inconsistent_sources():
    good = "alignas(16) const unsigned char g_m[] = {\n  0x01, 0xff,\n};\nconst unsigned int g_m_len = 2;\n"
    assert read_c_array(good, "m") == b"\x01\xff"
    with pytest.raises(FlashError, match="g_m_len says 3"):
        read_c_array(good.replace("g_m_len = 2", "g_m_len = 3"), "m")
    with pytest.raises(FlashError, match="no array g_other"):
        read_c_array(good, "other")
    with pytest.raises(FlashError, match="not a byte"):
        read_c_array(good.replace("0xff", "0x1ff"), "m")


def test_arena_estimate_is_close_to_the_measurement(real):
    estimate = estimate_arena(real.model)
    assert 0.9 * MEASURED_ARENA <= estimate <= 1.1 * MEASURED_ARENA
    # The declared size keeps a margin above what TFLite Micro measured.
    assert with_margin(MEASURED_ARENA) == 64_512 and with_margin(estimate) > MEASURED_ARENA
    assert with_margin(1000) == 5120  # the 4 KB minimum margin, rounded up to 1 KB


def test_mcu_module_is_board_side_safe():
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None
        import firmware_bridge.mcu
        bad = sorted(m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in
                     ("tensorflow", "keras", "tflite_micro"))
        bad += sorted(m for m in sys.modules if m.startswith(("edgemeta.data", "edgemeta.meta",
                                                               "edgemeta.quantize")))
        assert not bad, bad
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_header_strings_stay_one_c_literal_whatever_the_text():
    from firmware_bridge.mcu import _c_string

    assert _c_string("omniglot-protonet 1.2.0") == "omniglot-protonet 1.2.0"
    for hostile in ('a"; int x; //', "line\nbreak", "end\\", "tri??=graph", "é\x00"):
        out = _c_string(hostile)
        assert out.isascii() and out.isprintable() and '"' not in out and "?" not in out
        # Every backslash starts a 3-digit octal escape: none can escape the literal or the line.
        assert all(re.fullmatch(r"[0-7]{3}", out[i + 1:i + 4]) for i, c in enumerate(out) if c == "\\")
    assert _c_string('a"b\n') == "a\\042b\\012"
