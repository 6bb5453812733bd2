"""check_bundle: runtime wheels, int8, memory and storage budgets, and the one-line summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemeta.boards import (
    BOARDS_DIR_ENV,
    PROCESS_OVERHEAD_BYTES,
    Check,
    Compatibility,
    check_bundle,
    estimate_peak_bytes,
    get_board,
    list_boards,
)
from edgemeta.errors import BoardError

MB = 1024 * 1024


def _failed(compat: Compatibility) -> list[str]:
    return [c.name for c in compat.checks if not c.ok]


def test_conv4_model_fits_rpi_4b(conv4_manifest):
    compat = check_bundle(conv4_manifest(), get_board("rpi-4b"))
    assert compat.fits and _failed(compat) == []
    assert [c.name for c in compat.checks] == ["runtime", "int8", "memory"]
    assert all(isinstance(c, Check) and c.detail for c in compat.checks)
    assert compat.summary().startswith("fits rpi-4b: 3/3 checks pass")


def test_conv4_model_fits_every_shipped_board(conv4_manifest, monkeypatch):
    monkeypatch.delenv(BOARDS_DIR_ENV, raising=False)
    for board in list_boards():
        assert check_bundle(conv4_manifest(), board).fits, board.name


def test_32bit_board_with_python_newer_than_311_has_no_runtime(conv4_manifest):
    board = get_board("rpi-3bplus-32bit")
    assert check_bundle(conv4_manifest(), board).fits  # Bookworm's 3.11 is fine
    compat = check_bundle(conv4_manifest(), board, python_version="3.13")
    assert not compat.fits and _failed(compat) == ["runtime"]
    assert compat.summary().startswith(
        "does not fit rpi-3bplus-32bit: tflite-runtime has wheels for CPython 3.8-3.11 only, "
        "but rpi-3bplus-32bit runs Python 3.13")


def test_64bit_board_python_too_old_for_litert_suggests_tflite(conv4_manifest):
    compat = check_bundle(conv4_manifest(), get_board("rpi-4b"), python_version="3.9.2")
    assert _failed(compat) == ["runtime"]
    assert "tflite-runtime would install there" in compat.summary()


def test_litert_on_armv7l_is_refused(conv4_manifest, tmp_path, monkeypatch):
    text = Path(get_board("rpi-3bplus-32bit").source).read_text()
    text = (text.replace("rpi-3bplus-32bit", "armv7-litert")
                .replace('package = "tflite-runtime"', 'package = "ai-edge-litert"'))
    (tmp_path / "armv7-litert.toml").write_text(text)
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    compat = check_bundle(conv4_manifest(), get_board("armv7-litert"))
    assert _failed(compat) == ["runtime"]
    assert "ai-edge-litert has no wheel for armv7l" in compat.summary()


def test_model_too_big_for_zero_2w_memory(conv4_manifest):
    # 150 MB fits the 256 MB budget once but not twice (mapped flatbuffer + XNNPACK copy) + 40 MB.
    big = conv4_manifest(model_bytes=150 * MB)
    zero = check_bundle(big, get_board("rpi-zero-2w"))
    assert not zero.fits and "memory" in _failed(zero)
    memory = next(c for c in zero.checks if c.name == "memory")
    assert "exceeds the budget of 256 MB (50% of 512 MB RAM)" in memory.detail
    assert check_bundle(big, get_board("rpi-4b")).fits  # 2 GB budget


def test_zero_2w_storage_budget(conv4_manifest):
    compat = check_bundle(conv4_manifest(model_bytes=80 * MB), get_board("rpi-zero-2w"))
    assert _failed(compat) == ["storage"]
    assert compat.summary() == ("does not fit rpi-zero-2w: model of 80.0 MB exceeds rpi-zero-2w's "
                                "storage budget of 64 MB")


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_non_int8_model_is_refused(conv4_manifest, dtype):
    compat = check_bundle(conv4_manifest(dtype=dtype), get_board("rpi-5"))
    assert _failed(compat) == ["int8"]
    assert f"the model input is {dtype}, expected int8" in compat.summary()


def test_unquantized_output_is_refused(conv4_manifest):
    compat = check_bundle(conv4_manifest(output_scale=0.0), get_board("rpi-5"))
    assert _failed(compat) == ["int8"]


def test_peak_estimate_formula(conv4_manifest):
    m = conv4_manifest(model_bytes=1000)
    assert estimate_peak_bytes(m) == 2 * 1000 + 4 * 64 * 28 * 28 + PROCESS_OVERHEAD_BYTES
    bigger = conv4_manifest(model_bytes=1000, shape=(None, 84, 84, 3))
    assert estimate_peak_bytes(bigger) - estimate_peak_bytes(m) == 4 * 64 * (84 * 84 - 28 * 28)


def test_large_input_images_blow_the_zero_2w_budget(conv4_manifest):
    # 4 x 64 x 1024 x 1024 = 256 MB of activations alone.
    huge = conv4_manifest(shape=(None, 1024, 1024, 3))
    assert "memory" in _failed(check_bundle(huge, get_board("rpi-zero-2w")))


def test_bad_python_version_is_refused(conv4_manifest):
    with pytest.raises(BoardError, match=r"'3\.x' is not valid; expected e\.g\. \"3\.11\""):
        check_bundle(conv4_manifest(), get_board("rpi-4b"), python_version="3.x")


def test_results_are_frozen(conv4_manifest):
    compat = check_bundle(conv4_manifest(), get_board("rpi-4b"))
    with pytest.raises(AttributeError):
        compat.fits = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        get_board("rpi-4b").ram_mb = 1  # type: ignore[misc]


def test_bundle_built_for_other_boards_does_not_fit(conv4_manifest):
    """check must agree with the install, which refuses a bundle built for other boards."""
    from dataclasses import replace

    for_pi5 = replace(conv4_manifest(), boards=("rpi-5",))
    no = check_bundle(for_pi5, get_board("rpi-zero-2w"))
    assert not no.fits and [c.name for c in no.checks if not c.ok] == ["boards"]
    assert "--board rpi-zero-2w" in no.summary()
    yes = check_bundle(for_pi5, get_board("rpi-5"))
    assert yes.fits and yes.checks[0].name == "boards"
    assert "boards" not in [c.name for c in check_bundle(conv4_manifest(), get_board("rpi-5")).checks]
