"""Operational commands (keys, bundle sign, board init, flash, rollback, device, fleet): the ways
a user gets them wrong must end in one line and a non-zero exit, and must not destroy files."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_error_line(result) -> str:
    """The output of a failed command, checked to be a single 'Error: ...' line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[-1].startswith("Error: "), result.output
    # Not an exception click let through (CliRunner keeps those in result.exception).
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[-1]


# ------------------------------------------------------------------ keys and signing
@pytest.mark.parametrize("public", ["same.key", "sub/../same.key"])
def test_keys_generate_refuses_public_path_equal_to_private(runner, tmp_path, monkeypatch,
                                                            public):
    # The public key written over the private one would lose the signing key for good.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    r = runner.invoke(cli, ["keys", "generate", "same.key", "--public", public])
    assert r.exit_code == 2, r.output
    assert "same file" in r.output
    assert not (tmp_path / "same.key").exists()


def test_bundle_sign_refuses_to_write_over_its_key(runner, tmp_path, fake_bundle):
    key = tmp_path / "release.key"
    assert runner.invoke(cli, ["keys", "generate", str(key)]).exit_code == 0
    before = key.read_bytes()
    r = runner.invoke(cli, ["bundle", "sign", str(fake_bundle()), "--key", str(key),
                            "--out", str(key)])
    assert r.exit_code == 2, r.output
    assert "private key" in r.output
    assert key.read_bytes() == before


def test_bundle_sign_out_under_a_file_is_one_line(runner, tmp_path, fake_bundle):
    key = tmp_path / "release.key"
    assert runner.invoke(cli, ["keys", "generate", str(key)]).exit_code == 0
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = runner.invoke(cli, ["bundle", "sign", str(fake_bundle()), "--key", str(key),
                            "--out", str(blocker / "signed.edgemeta")])
    line = _one_error_line(r)
    assert "afile" in line


# ------------------------------------------------------------------ OSError and Ctrl-C
def _raise(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc
    return fail


@pytest.mark.parametrize(
    ("target", "args", "expected"),
    [
        ("edgemeta.cli.trust.sign_bundle", ["bundle", "sign", "{bundle}", "--key", "{key}"],
         "No space left on device"),
        ("edgemeta.cli.trust.init_home", ["board", "init", "{tmp}/home"], "No space left"),
        ("firmware_bridge.flash", ["flash", "{bundle}", "--to", "dir:{tmp}/home"],
         "No space left"),
        ("firmware_bridge.rollback", ["rollback", "--to", "dir:{tmp}"], "No space left"),
        ("edgemeta.bundle.read_bundle", ["inspect", "{bundle}"], "No space left"),
        ("firmware_bridge.mcu.export_c", ["export", "c", "{bundle}", "--out", "{tmp}/c"],
         "No space left"),
    ],
)
def test_os_errors_are_one_line(runner, tmp_path, fake_bundle, monkeypatch, target, args,
                                expected):
    key = tmp_path / "k.key"
    assert runner.invoke(cli, ["keys", "generate", str(key)]).exit_code == 0
    values = {"bundle": str(fake_bundle()), "key": str(key), "tmp": str(tmp_path)}
    monkeypatch.setattr(target, _raise(OSError(errno.ENOSPC, "No space left on device",
                                               str(tmp_path / "x"))))
    line = _one_error_line(runner.invoke(cli, [a.format(**values) for a in args]))
    assert expected in line and str(tmp_path / "x") in line


def test_permission_denied_says_what_was_expected(runner, tmp_path, monkeypatch):
    monkeypatch.setattr("edgemeta.cli.trust.init_home",
                        _raise(PermissionError(errno.EACCES, "Permission denied", "/media/sd")))
    line = _one_error_line(runner.invoke(cli, ["board", "init", str(tmp_path / "h")]))
    assert "Permission denied" in line and "/media/sd" in line and "expected" in line


def test_ctrl_c_during_flash_is_a_clean_exit(runner, tmp_path, fake_bundle, monkeypatch):
    monkeypatch.setattr("firmware_bridge.flash", _raise(KeyboardInterrupt()))
    r = runner.invoke(cli, ["flash", str(fake_bundle()), "--to", f"dir:{tmp_path}"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Aborted" in r.output


# ------------------------------------------------------------------ board init
def test_board_init_with_unknown_profile_creates_nothing(runner, tmp_path):
    home = tmp_path / "home"
    r = runner.invoke(cli, ["board", "init", str(home), "--board", "rpi-99"])
    assert "unknown board 'rpi-99'" in _one_error_line(r)
    assert not home.exists()


def test_board_init_with_bad_key_creates_nothing(runner, tmp_path):
    home, bad = tmp_path / "home", tmp_path / "bad.pub"
    bad.write_text("not a key")
    r = runner.invoke(cli, ["board", "init", str(home), "--trust", str(bad)])
    assert "not a PEM public key" in _one_error_line(r)
    assert not home.exists()


def test_board_init_refuses_a_microcontroller_profile(runner, tmp_path):
    # A board home is where `edgemeta flash` installs: every install would be refused later.
    home = tmp_path / "home"
    r = runner.invoke(cli, ["board", "init", str(home), "--board", "esp32-s3"])
    assert "export c" in _one_error_line(r)
    assert not home.exists()


# ------------------------------------------------------------------ flash and rollback
def test_flash_over_mqtt_refuses_ssh_options(runner, fake_bundle):
    r = runner.invoke(cli, ["flash", str(fake_bundle()), "--to", "mqtt://127.0.0.1:1",
                            "--device", "pi-01", "--ssh-option", "IdentityFile=~/.ssh/pi"])
    assert r.exit_code == 2, r.output
    assert "ssh://" in r.output


def test_rollback_over_mqtt_points_to_fleet_cmd(runner):
    r = runner.invoke(cli, ["rollback", "--to", "mqtt://127.0.0.1:1/site-a/pi-01"])
    assert r.exit_code == 2, r.output
    assert "fleet cmd" in r.output and "rollback" in r.output


# ------------------------------------------------------------------ device run and fleet
@pytest.mark.parametrize("option", [["--poll", "0"], ["--poll", "-1"], ["--interval", "0"],
                                    ["--duration", "-5"]])
def test_device_run_rejects_periods_that_are_not_positive(runner, tmp_path, option):
    # --poll 0 used to make the agent quit after one pass, as if --once had been given.
    r = runner.invoke(cli, ["device", "run", "--home", str(tmp_path), "--id", "d1", *option])
    assert r.exit_code == 2, r.output
    assert option[0] in r.output


def test_device_run_rejects_unknown_board(runner, tmp_path):
    r = runner.invoke(cli, ["device", "run", "--home", str(tmp_path), "--id", "d1", "--once",
                            "--board", "rpi-99"])
    assert "unknown board 'rpi-99'" in _one_error_line(r)


@pytest.mark.parametrize("limit", ["-3", "-1"])
def test_fleet_watch_rejects_negative_limit(runner, limit):
    # A negative --limit used to hide the last rows ("first -3 shown").
    r = runner.invoke(cli, ["fleet", "watch", "--broker", "mqtt://127.0.0.1:1",
                            "--limit", limit, "--duration", "0.1"])
    assert r.exit_code == 2, r.output
    assert "--limit" in r.output


def test_cli_modules_stay_small():
    here = Path(__file__).resolve().parents[2] / "edgemeta" / "cli"
    for name in ("flash.py", "trust.py", "board.py", "fleet.py", "__init__.py"):
        assert len((here / name).read_text().splitlines()) < 500, name


def test_flash_to_mqtt_without_slashes_names_the_url_form(runner, fake_bundle):
    r = runner.invoke(cli, ["flash", str(fake_bundle()), "--to", "mqtt:broker:1883",
                            "--device", "pi-01"])
    assert r.exit_code == 2, r.output
    assert "mqtt://BROKER" in r.output and "apply only to" not in r.output


def test_export_c_without_tflite_micro_suggests_no_verify(tmp_path, monkeypatch):
    import sys

    from click.testing import CliRunner

    from edgemeta.cli import cli

    bundle = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # as on a Mac or an arm64 host
    r = CliRunner().invoke(cli, ["export", "c", str(bundle), "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "edgemeta[mcu]" in r.output and "--no-verify" in r.output
    r = CliRunner().invoke(cli, ["export", "c", str(bundle), "--out", str(tmp_path / "c"),
                                 "--no-verify"])
    assert r.exit_code == 0, r.output
    assert "estimated" in r.output


def test_check_takes_the_boards_real_python():
    from click.testing import CliRunner

    from edgemeta.cli import cli

    bundle = str(Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta")
    ok = CliRunner().invoke(cli, ["check", bundle, "--board", "rpi-3bplus-32bit"])
    assert ok.exit_code == 0, ok.output
    # Same board after an OS upgrade to Python 3.13: tflite-runtime has no wheel there.
    r = CliRunner().invoke(cli, ["check", bundle, "--board", "rpi-3bplus-32bit",
                                 "--python", "3.13"])
    assert r.exit_code == 1 and "[FAIL] runtime" in r.output and "3.13" in r.output
    r = CliRunner().invoke(cli, ["check", bundle, "--board", "rpi-4b", "--python", "3.x"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "3.11" in r.output
