"""Microcontroller profiles: flash and RAM budgets, the MCU checks, and the refusal to flash."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgemeta.boards import (
    BOARDS_DIR_ENV,
    check_bundle,
    get_board,
    list_boards,
    require_flashable,
)
from edgemeta.cli import cli
from edgemeta.errors import BoardError

KB = 1024
MCU = """
kind = "mcu"
name = "{name}"
title = "Test MCU"
soc = "test SoC"
arch = "armv7e-m"
os = "bare metal"
notes = "test"

[cpu]
cores = 1
core = "Cortex-M4F"

[mcu]
flash_kb = 1024
ram_kb = 256
firmware_reserve_kb = 320
ram_reserve_kb = 96
"""


def _by_name(compat):
    return {c.name: c for c in compat.checks}


def test_mcu_profile_facts():
    esp, nano = get_board("esp32-s3"), get_board("arduino-nano-33-ble-sense")
    assert esp.is_mcu and nano.is_mcu and not get_board("rpi-4b").is_mcu
    assert (esp.flash_kb, esp.ram_kb, esp.psram_kb, esp.arch, esp.cpu_cores) == (8192, 512, 8192, "xtensa", 2)
    assert (nano.flash_kb, nano.ram_kb, nano.psram_kb, nano.arch, nano.cpu_core) == \
        (1024, 256, None, "armv7e-m", "Cortex-M4F")
    assert "N8R8" in esp.title and "nRF52840" in nano.soc
    for b in (esp, nano):
        assert b.runtime == "tflite-micro" and b.python == "" and b.pip_command == ""
        assert 0 < b.firmware_reserve_kb < b.flash_kb and 0 < b.ram_reserve_kb < b.ram_kb


def test_conv4_manifest_fits_both_mcus_without_the_model(conv4_manifest):
    for name in ("esp32-s3", "arduino-nano-33-ble-sense"):
        compat = check_bundle(conv4_manifest(), get_board(name))
        assert compat.fits and not compat.flashable
        assert [c.name for c in compat.checks] == ["runtime", "int8", "flash", "arena"]
        assert "guessed from the 28x28 input" in _by_name(compat)["arena"].detail
        assert "edgemeta export c" in _by_name(compat)["runtime"].detail


def test_model_too_big_for_nano_flash_but_fine_on_esp32(conv4_manifest):
    big = conv4_manifest(model_bytes=800 * KB)  # 1024 KB flash - 320 KB firmware = 704 KB
    nano = check_bundle(big, get_board("arduino-nano-33-ble-sense"))
    assert not nano.fits and [c.name for c in nano.failures] == ["flash"]
    assert nano.summary() == ("does not fit arduino-nano-33-ble-sense: model of 800.0 KB exceeds "
                              "the 704 KB of flash left after the 320 KB firmware reserve "
                              "(1024 KB flash)")
    assert check_bundle(big, get_board("esp32-s3")).fits


def test_large_input_arena_uses_esp32_psram_and_fails_on_nano(conv4_manifest):
    wide = conv4_manifest(shape=(None, 96, 96, 1))  # ~720 KB of int8 activations
    esp = _by_name(check_bundle(wide, get_board("esp32-s3")))["arena"]
    assert esp.ok and "fits the 8192 KB PSRAM" in esp.detail
    nano = check_bundle(wide, get_board("arduino-nano-33-ble-sense"))
    assert [c.name for c in nano.failures] == ["arena"]
    assert "exceeds the 160 KB of SRAM" in nano.failures[0].detail


def test_float_model_is_refused_on_mcu(conv4_manifest):
    compat = check_bundle(conv4_manifest(dtype="float32"), get_board("esp32-s3"))
    assert [c.name for c in compat.failures] == ["int8"]


def test_flash_to_mcu_is_refused(fake_bundle, tmp_path):
    with pytest.raises(BoardError, match=r"esp32-s3 is a microcontroller.*use `edgemeta export c"):
        require_flashable(get_board("esp32-s3"))
    require_flashable(get_board("rpi-4b"))  # no error
    home = tmp_path / "board"
    r = CliRunner().invoke(cli, ["flash", str(fake_bundle()), "--to", f"dir:{home}",
                                 "--board", "arduino-nano-33-ble-sense"])
    assert r.exit_code == 1 and "edgemeta export c" in r.output and "Traceback" not in r.output
    assert not home.exists()


def test_boards_command_lists_mcus_in_kb():
    r = CliRunner().invoke(cli, ["boards"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("esp32-s3 "))
    assert "512 KB" in line and "flash 8192 KB" in line and "tflite-micro" in line


def test_custom_mcu_profile_loads(tmp_path, monkeypatch):
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    (tmp_path / "my-mcu.toml").write_text(MCU.format(name="my-mcu"))
    assert [b.name for b in list_boards()] == ["my-mcu"]
    assert get_board("my-mcu").ram_kb == 256


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda t: t.replace('kind = "mcu"', 'kind = "fpga"'), r"'kind' is 'fpga'; expected one of linux, mcu"),
    (lambda t: t.replace("armv7e-m", "aarch64"), r"'arch' is 'aarch64'; expected one of armv7e-m"),
    (lambda t: t.replace("ram_reserve_kb = 96", "ram_reserve_kb = 256"),
     r"'mcu.ram_reserve_kb' is 256; expected less than 'mcu.ram_kb' \(256\)"),
    (lambda t: t.replace("flash_kb = 1024\n", ""), r"lacks the field 'mcu.flash_kb'"),
    (lambda t: t + 'python = "3.11"\n', r"unknown field\(s\) \['mcu.python'\]"),
    (lambda t: 'ram_mb = 1\n' + t, r"unknown field\(s\) \['ram_mb'\]"),
])
def test_bad_mcu_profiles_name_file_and_field(tmp_path, monkeypatch, edit, pattern):
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    (tmp_path / "bad.toml").write_text(edit(MCU.format(name="bad")))
    with pytest.raises(BoardError, match=r"bad\.toml") as info:
        get_board("bad")
    assert info.match(pattern)
