"""The real int8 bundle exported to C and run under the TFLite Micro Python interpreter.

The bytes are parsed back from the written ``.cc`` and run with the header's arena size, then
compared with LiteRT on the same int8 inputs (±2 LSB). Without tflite-micro the tests skip
locally and fail in CI (env ``CI`` set), so a missing package never turns into green CI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgemeta.bundle import read_bundle, sha256_hex
from edgemeta.cli import cli
from edgemeta.errors import FlashError
from edgemeta.runtime.backends import load_interpreter
from firmware_bridge.mcu import export_c, measure_arena, read_c_array, verify_c_export

REAL = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
HINT = "tflite-micro is not installed (pip install 'edgemeta[mcu]')"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tflm():
    try:
        from tflite_micro import runtime
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{HINT}; CI must provide it", pytrace=False)
        pytest.skip(HINT)
    return runtime


@pytest.fixture(scope="module")
def exported(tflm, tmp_path_factory):
    return export_c(REAL, tmp_path_factory.mktemp("mcu"), arena="measure")


def _arena(header: Path) -> int:
    return int(re.search(r"#define MODEL_DATA_ARENA_SIZE (\d+)", header.read_text()).group(1))


def test_exported_bytes_are_the_bundle_model(exported):
    bundle = read_bundle(REAL)
    data = read_c_array(exported.source.read_text())
    assert data == bundle.model and sha256_hex(data) == bundle.manifest.model_sha256
    assert exported.arena.method == "measured"
    assert "measured with the tflite-micro interpreter" in exported.header.read_text()


def test_measured_arena_is_the_smallest_that_works(tflm, exported):
    model = exported.model_bytes
    raw = exported.arena.raw_bytes
    assert raw == measure_arena(model) and 50_000 < raw < 100_000
    assert exported.arena_bytes >= raw * 1.25 and _arena(exported.header) == exported.arena_bytes
    tflm.Interpreter.from_bytes(model, arena_size=raw)  # allocates
    with pytest.raises(RuntimeError, match="failed to allocate"):
        tflm.Interpreter.from_bytes(model, arena_size=raw - 1)


def test_tflm_matches_litert_within_2_lsb_on_the_exported_bytes(tflm, exported):
    data = read_c_array(exported.source.read_text())  # exactly what the firmware compiles
    micro = tflm.Interpreter.from_bytes(data, arena_size=_arena(exported.header))
    detail = micro.get_input_details(0)
    assert list(detail["shape"]) == [1, 28, 28, 1]  # the dynamic batch runs as batch 1
    lite = load_interpreter(data).interpreter
    lite.allocate_tensors()
    rng = np.random.default_rng(1)
    blank = np.full((1, 28, 28, 1), -128, np.int8)
    cross = blank.copy()
    cross[0, 12:16, 4:24, 0] = 127
    cross[0, 4:24, 12:16, 0] = 127
    outputs = []
    for x in [blank, cross, *(rng.integers(-128, 128, (1, 28, 28, 1), dtype=np.int8) for _ in range(6))]:
        micro.set_input(x, 0)
        micro.invoke()
        a = micro.get_output(0).astype(np.int32)
        lite.set_tensor(lite.get_input_details()[0]["index"], x)
        lite.invoke()
        b = lite.get_tensor(lite.get_output_details()[0]["index"]).astype(np.int32)
        assert a.shape == b.shape == (1, read_bundle(REAL).manifest.embedding_dim)
        assert np.abs(a - b).max() <= 2
        outputs.append(a)
    # The comparison means something only if the embeddings differ between inputs.
    assert len({o.tobytes() for o in outputs}) == len(outputs)


def test_verify_c_export_passes_and_catches_tampering(exported, tmp_path):
    result = verify_c_export(exported.source)
    assert result.ok and result.max_abs_diff <= 2 and result.samples == 4
    assert result.arena_bytes == exported.arena_bytes

    # Negate the weights of the last convolution inside the .cc: structure intact, outputs wrong.
    lite = load_interpreter(exported.model_bytes).interpreter
    dim = read_bundle(REAL).manifest.embedding_dim  # the filters of every convolution
    weights = max((d for d in lite.get_tensor_details() if d["dtype"] == np.int8
                   and len(d["shape"]) == 4 and d["shape"][0] == dim and d["shape"][-1] == dim),
                  key=lambda d: d["index"])
    w = lite.get_tensor(weights["index"]).tobytes()
    model = exported.model_bytes
    start = model.find(w)
    assert start > 0 and model.find(w, start + 1) == -1
    bad = bytearray(model)
    bad[start:start + len(w)] = (-np.frombuffer(w, np.int8).astype(np.int16)).clip(-127, 127) \
        .astype(np.int8).tobytes()
    text = exported.source.read_text()
    body = ",\n".join(", ".join(f"0x{b:02x}" for b in bad[i:i + 12]) for i in range(0, len(bad), 12))
    tampered = tmp_path / "model_data.cc"
    tampered.write_text(re.sub(r"\{\n.*?\n\};", "{\n" + body + ",\n};", text, count=1, flags=re.S))
    (tmp_path / "model_data.h").write_text(exported.header.read_text())
    assert read_c_array(tampered.read_text()) == bytes(bad)
    with pytest.raises(FlashError, match="was edited or mixed up"):
        verify_c_export(tampered)
    # Both runtimes agree on the edited bytes (so only the sha256 caught it), and the outputs
    # really changed: the edit is not a no-op.
    header = exported.header.read_text().replace(exported.sha256, sha256_hex(bytes(bad)))
    (tmp_path / "model_data.h").write_text(header)
    # (Negated weights are an unusual model: the runtimes' rounding may differ by a little more
    # than on a trained one, hence 4 LSB here.)
    assert verify_c_export(tampered, tolerance=4).ok
    x = np.full((1, 28, 28, 1), -128, np.int8)
    x[0, 4:24, 12:16, 0] = 127
    outs = []
    for data in (model, bytes(bad)):
        it = load_interpreter(data).interpreter
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int32))
    assert np.abs(outs[0] - outs[1]).max() > 10

    # The ±2 LSB comparison is live: with a tolerance nothing can meet, verification fails.
    with pytest.raises(FlashError, match=r"differs from \w+ by \d+ LSB .* at most -1"):
        verify_c_export(exported.source, tolerance=-1)

    # An arena below the measured need fails with the exported arena, not later on the board.
    (tmp_path / "model_data.cc").write_text(text)
    (tmp_path / "model_data.h").write_text(re.sub(r"ARENA_SIZE \d+", "ARENA_SIZE 4096",
                                                  exported.header.read_text()))
    with pytest.raises(FlashError, match="with the exported arena of 4,096 bytes"):
        verify_c_export(tmp_path / "model_data.cc")


def test_cli_export_c_and_check_mcu_boards(tflm, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["export", "c", str(REAL), "--out", str(tmp_path / "fw"),
                            "--name", "protonet"])
    assert r.exit_code == 0, r.output
    assert "ops (6): CONV_2D, MAX_POOL_2D, SHAPE, STRIDED_SLICE, PACK, RESHAPE" in r.output
    assert "measured with the tflite-micro interpreter" in r.output
    assert re.search(r"verified: TFLite Micro and \w+ agree within [0-2] LSB", r.output)
    assert sorted(p.name for p in (tmp_path / "fw").iterdir()) == ["protonet.cc", "protonet.h"]
    for board in ("esp32-s3", "arduino-nano-33-ble-sense"):
        r = runner.invoke(cli, ["check", str(REAL), "--board", board])
        assert r.exit_code == 0, r.output
        assert f"fits {board}: 5/5 checks pass (runtime, int8, ops, flash, arena)" in r.output
        assert "measured with tflite-micro" in r.output and "all resolved by TFLite Micro" in r.output
