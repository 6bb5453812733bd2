"""boards/*.toml: every profile loads, facts are right, bad files give errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemeta.boards import (
    ARCHES,
    BOARDS_DIR_ENV,
    MCU_ARCHES,
    BoardProfile,
    boards_dir,
    get_board,
    list_boards,
    runtime_wheels,
)
from edgemeta.errors import BoardError

REQUIRED = {"rpi-zero-2w", "rpi-3bplus", "rpi-3bplus-32bit", "rpi-4b", "rpi-5", "host-sim"}
REPO_BOARDS = Path(__file__).resolve().parents[2] / "boards"

GOOD = """
name = "{name}"
title = "Test board"
soc = "test SoC"
arch = "aarch64"
ram_mb = 1024
os = "Raspberry Pi OS (64-bit)"
python = "3.11"
max_threads = 4

[cpu]
cores = 4
core = "Cortex-A53"

[runtime]
package = "ai-edge-litert"
pip = ["ai-edge-litert>=1.0"]
"""


@pytest.fixture
def custom_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    return tmp_path


def test_default_dir_is_the_repo_boards_folder_in_an_editable_install(monkeypatch):
    monkeypatch.delenv(BOARDS_DIR_ENV, raising=False)
    assert boards_dir().resolve() == REPO_BOARDS


def test_every_profile_loads_and_required_boards_exist(monkeypatch):
    monkeypatch.delenv(BOARDS_DIR_ENV, raising=False)
    boards = list_boards()
    names = [b.name for b in boards]
    assert REQUIRED <= set(names)
    assert names == sorted(names)
    assert len(boards) == len(list(REPO_BOARDS.glob("[!_]*.toml")))
    for b in boards:
        assert isinstance(b, BoardProfile) and b.arch in (MCU_ARCHES if b.is_mcu else ARCHES)
        assert Path(b.source).stem == b.name and b.title and b.notes
        assert 1 <= b.max_threads <= b.cpu_cores
        if b.is_mcu:  # microcontrollers: TFLite Micro in the firmware, nothing to pip install
            assert b.runtime == "tflite-micro" and b.runtime_pip == () and b.pip_command == ""
        else:
            assert b.runtime_pip[0].startswith(b.runtime)


def test_profile_facts():
    zero, b3, b4, b5 = (get_board(n) for n in ("rpi-zero-2w", "rpi-3bplus", "rpi-4b", "rpi-5"))
    assert (zero.ram_mb, zero.cpu_cores, zero.cpu_core) == (512, 4, "Cortex-A53")
    assert (b3.ram_mb, b3.cpu_core, b3.soc) == (1024, "Cortex-A53", "Broadcom BCM2837B0")
    assert (b4.ram_mb, b4.cpu_core, b4.soc) == (4096, "Cortex-A72", "Broadcom BCM2711")
    assert (b5.ram_mb, b5.cpu_core, b5.soc) == (4096, "Cortex-A76", "Broadcom BCM2712")
    assert "4 GB" in b4.title and "4 GB" in b5.title
    assert get_board("host-sim").arch == "x86_64"


def test_runtime_follows_architecture():
    wheels = runtime_wheels()
    for b in list_boards():
        if b.is_mcu:
            continue  # no Python runtime; see tests/boards/test_mcu_boards.py
        if b.arch == "armv7l":
            assert b.runtime == "tflite-runtime"
            assert "numpy<2" in b.runtime_pip and "tflite-runtime==2.14.0" in b.runtime_pip
        else:
            assert b.runtime == "ai-edge-litert"
        assert b.arch in wheels[b.runtime].arches
    assert get_board("rpi-3bplus-32bit").arch == "armv7l"


def test_wheel_matrix_matches_toolchain_notes():
    wheels = runtime_wheels()
    litert, tflite = wheels["ai-edge-litert"], wheels["tflite-runtime"]
    assert litert.has_wheel("aarch64", (3, 14)) and not litert.has_wheel("armv7l", (3, 11))
    assert not litert.has_wheel("x86_64", (3, 9))
    assert tflite.has_wheel("armv7l", (3, 11)) and not tflite.has_wheel("armv7l", (3, 12))


def test_pip_command_is_shell_ready():
    assert get_board("rpi-3bplus-32bit").pip_command == \
        "pip install 'tflite-runtime==2.14.0' 'numpy<2'"


def test_unknown_board_lists_known_names():
    with pytest.raises(BoardError) as info:
        get_board("rpi-6")
    message = str(info.value)
    assert "'rpi-6'" in message
    assert all(name in message for name in REQUIRED)


def test_env_override_and_runtimes_fallback(custom_dir):
    (custom_dir / "my-board.toml").write_text(GOOD.format(name="my-board"))
    assert [b.name for b in list_boards()] == ["my-board"]  # _runtimes.toml came from the package
    assert get_board("my-board").ram_mb == 1024


def test_env_override_to_missing_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(BoardError, match=rf"{BOARDS_DIR_ENV}.*does not exist"):
        list_boards()


def test_malformed_toml_names_the_file(custom_dir):
    (custom_dir / "broken.toml").write_text('name = "broken"\nram_mb = = 3\n')
    with pytest.raises(BoardError, match=r"broken\.toml is not valid TOML"):
        get_board("broken")


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda t: t.replace("ram_mb = 1024\n", ""), r"lacks the field 'ram_mb'; expected a positive"),
        (lambda t: t.replace("core = \"Cortex-A53\"\n", ""), r"lacks the field 'cpu.core'"),
        (lambda t: t.replace("ram_mb = 1024", "ram_mb = \"1GB\""), r"'ram_mb' is '1GB'; expected"),
        (lambda t: t.replace("ram_mb = 1024", "ram_mb = true"), r"'ram_mb' is True"),
        (lambda t: t.replace("ram_mb = 1024", "ram_mb = 0"), r"'ram_mb' is 0"),
        (lambda t: t.replace("aarch64", "armhf"), r"'arch' is 'armhf'; expected one of aarch64"),
        (lambda t: t.replace('python = "3.11"', 'python = "bookworm"'), r"'python'.*expected e\.g\."),
        (lambda t: t.replace('package = "ai-edge-litert"', 'package = "onnxruntime"'),
         r"'runtime.package' is 'onnxruntime'; expected one of"),
        (lambda t: t.replace('pip = ["ai-edge-litert>=1.0"]', "pip = []"), r"'runtime.pip'"),
        (lambda t: t + "ram_gb = 4\n", r"unknown field\(s\) \['runtime.ram_gb'\]"),
        (lambda t: "ram_gb = 4\n" + t, r"unknown field\(s\) \['ram_gb'\]"),
        (lambda t: t.replace('name = "bad"', 'name = "other"'), r"'name' is 'other'; expected 'bad'"),
    ],
)
def test_bad_fields_name_file_and_field(custom_dir, edit, pattern):
    (custom_dir / "bad.toml").write_text(edit(GOOD.format(name="bad")))
    with pytest.raises(BoardError, match=r"bad\.toml") as info:
        get_board("bad")
    assert info.match(pattern)


def test_one_broken_profile_does_not_hide_the_others_from_get_board(custom_dir):
    (custom_dir / "good.toml").write_text(GOOD.format(name="good"))
    (custom_dir / "broken.toml").write_text("not toml at all [")
    assert get_board("good").name == "good"
    with pytest.raises(BoardError, match=r"broken\.toml"):
        list_boards()
