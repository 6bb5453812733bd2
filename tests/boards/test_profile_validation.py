"""Profile and wheel-matrix validation beyond the shipped files: architectures as
``platform.machine()`` reports them, files that are not UTF-8, a malformed ``_runtimes.toml``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.boards import (
    ARCHES,
    BOARDS_DIR_ENV,
    check_bundle,
    get_board,
    list_boards,
    runtime_wheels,
)
from edgemeta.cli import cli
from edgemeta.errors import BoardError

REPO_BOARDS = Path(__file__).resolve().parents[2] / "boards"


@pytest.fixture
def custom_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(BOARDS_DIR_ENV, str(tmp_path))
    return tmp_path


def _profile(name: str, **replace: str) -> str:
    text = (REPO_BOARDS / "rpi-3bplus-32bit.toml").read_text().replace("rpi-3bplus-32bit", name)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def test_arches_are_what_platform_machine_reports():
    # Pi Zero / Zero W / Pi 1 on 32-bit Raspberry Pi OS report armv6l.
    assert {"aarch64", "armv7l", "armv6l", "x86_64"} <= set(ARCHES)


def test_armv6l_board_loads_and_has_no_runtime(custom_dir, conv4_manifest):
    (custom_dir / "pi-zero-w.toml").write_text(_profile("pi-zero-w", armv7l="armv6l"))
    board = get_board("pi-zero-w")
    assert board.arch == "armv6l"
    compat = check_bundle(conv4_manifest(), board)
    assert not compat.fits
    runtime = {c.name: c for c in compat.checks}["runtime"]
    assert not runtime.ok and "no wheel for armv6l" in runtime.detail
    # An ARMv6 CPU runs no 64-bit OS and no Python version helps: say so, not "use a 64-bit OS".
    assert "publishes wheels for armv6l at all" in runtime.detail
    assert "64-bit" not in runtime.detail


def test_check_cli_says_tflite_runtime_has_no_wheel_for_python_312(custom_dir, fake_bundle):
    (custom_dir / "pi3-trixie.toml").write_text(_profile("pi3-trixie", **{'"3.11"': '"3.13"'}))
    r = CliRunner().invoke(cli, ["check", str(fake_bundle()), "--board", "pi3-trixie"])
    assert r.exit_code == 1, r.output
    assert "[FAIL] runtime" in r.output and "CPython 3.8-3.11 only" in r.output


def test_profile_that_is_not_utf8_names_the_file(custom_dir):
    text = _profile("latin").replace('notes = """Quad', 'notes = """Caf\u00e9 Quad')
    (custom_dir / "latin.toml").write_bytes(text.encode("latin-1"))
    with pytest.raises(BoardError, match=r"latin\.toml.*UTF-8"):
        get_board("latin")
    r = CliRunner().invoke(cli, ["boards"])
    assert r.exit_code == 1 and "latin.toml" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda t: t.replace('arches = ["x86_64", "aarch64"]', 'arches = "x86_64"'),
         r"\[ai-edge-litert\].*arches"),
        (lambda t: t.replace('arches = ["x86_64", "aarch64"]', 'arches = ["x86-64"]'),
         r"\[ai-edge-litert\].*'x86-64'"),
        (lambda t: t.replace('python = ["3.10", "3.14"]', 'python = ["3.14", "3.10"]'),
         r"\[ai-edge-litert\].*3\.14.*3\.10"),
        (lambda t: "stray = 3\n" + t, r"\[stray\]"),
    ],
)
def test_malformed_wheel_matrix_names_entry(custom_dir, edit, pattern):
    text = (REPO_BOARDS / "_runtimes.toml").read_text()
    (custom_dir / "_runtimes.toml").write_text(edit(text))
    with pytest.raises(BoardError, match=pattern):
        runtime_wheels()


def test_shipped_profiles_and_matrix_agree(monkeypatch):
    monkeypatch.delenv(BOARDS_DIR_ENV, raising=False)
    matrix = runtime_wheels()
    for wheels in matrix.values():
        assert set(wheels.arches) <= set(ARCHES) and wheels.python_min <= wheels.python_max
    for board in list_boards():
        if board.is_mcu:
            continue
        # Every shipped Linux profile names a runtime that installs on it, and pip installs it.
        assert matrix[board.runtime].has_wheel(board.arch, tuple(map(int, board.python.split("."))))
        assert any(spec.startswith(board.runtime) for spec in board.runtime_pip)


def test_64bit_board_with_too_new_python_is_not_told_to_use_a_64bit_os(conv4_manifest):
    compat = check_bundle(conv4_manifest(), get_board("rpi-4b"), python_version="3.15")
    runtime = {c.name: c for c in compat.checks}["runtime"]
    assert not runtime.ok and "Python 3.11" in runtime.detail
    assert "64-bit OS" not in runtime.detail  # it already runs one


def test_32bit_board_with_too_new_python_is_told_about_both_ways_out(conv4_manifest):
    compat = check_bundle(conv4_manifest(), get_board("rpi-3bplus-32bit"), python_version="3.13")
    runtime = {c.name: c for c in compat.checks}["runtime"]
    assert not runtime.ok and "Python 3.11" in runtime.detail and "64-bit OS" in runtime.detail
