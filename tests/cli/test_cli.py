"""The CLI through click's CliRunner: every command's happy path and its one-line errors."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.bundle import read_bundle
from edgemeta.cli import cli
from tests.conftest import require_module


@pytest.fixture
def runner():
    return CliRunner()


def test_boards_lists_profiles(runner):
    r = runner.invoke(cli, ["boards"])
    assert r.exit_code == 0, r.output
    for name in ("rpi-zero-2w", "rpi-3bplus", "rpi-4b", "rpi-5", "host-sim"):
        assert name in r.output


def test_unknown_board_is_one_clear_line(runner, fake_bundle):
    r = runner.invoke(cli, ["check", str(fake_bundle()), "--board", "rpi-99"])
    assert r.exit_code == 1
    assert "rpi-99" in r.output and "rpi-4b" in r.output  # names the problem and the choices
    assert "Traceback" not in r.output


def test_check_fits(runner, fake_bundle):
    r = runner.invoke(cli, ["check", str(fake_bundle()), "--board", "rpi-4b"])
    assert r.exit_code == 0, r.output
    assert "fits rpi-4b" in r.output


def test_tampered_bundle_errors(runner, fake_bundle, tmp_path):
    path = fake_bundle()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for args in (["inspect", str(path)], ["flash", str(path), "--to", f"dir:{tmp_path / 'home'}"]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1 and r.output.startswith("Error: "), r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "current").exists()


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"


def test_inspect(runner, fake_bundle):
    r = runner.invoke(cli, ["inspect", str(fake_bundle())])
    assert r.exit_code == 0 and json.loads(r.output)["version"] == "1.0.0"


def test_keys_sign_trust_and_flash(runner, tmp_path):
    """The trust path a user follows: keys, sign, configure the board, flash (real model)."""
    key = tmp_path / "release.key"
    r = runner.invoke(cli, ["keys", "generate", str(key)])
    assert r.exit_code == 0 and (tmp_path / "release.key.pub").is_file(), r.output
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert runner.invoke(cli, ["keys", "generate", str(key)]).exit_code == 1  # never overwritten
    home = tmp_path / "board"
    r = runner.invoke(cli, ["board", "init", str(home), "--trust", str(key) + ".pub",
                            "--board", "host-sim"])
    assert r.exit_code == 0 and "unsigned bundles refused" in r.output, r.output
    # Unsigned: refused in one line that says how to fix it, nothing installed.
    r = runner.invoke(cli, ["flash", str(SHIPPED), "--to", f"dir:{home}"])
    assert r.exit_code == 1 and "not signed" in r.output and "edgemeta bundle sign" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (home / "current").exists()
    signed = tmp_path / "signed.edgemeta"
    r = runner.invoke(cli, ["bundle", "sign", str(SHIPPED), "--key", str(key), "--out", str(signed)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["bundle", "verify", str(signed), "--trust", str(key) + ".pub"])
    assert r.exit_code == 0 and "verifies" in r.output
    r = runner.invoke(cli, ["flash", str(signed), "--to", f"dir:{home}", "--board", "host-sim"])
    assert r.exit_code == 0, r.output
    assert (home / "current").read_text().strip() == read_bundle(SHIPPED).version
    r = runner.invoke(cli, ["flash", str(signed), "--to", f"dir:{home}"])
    assert "already installed" in r.output


def test_flash_unknown_scheme(runner, fake_bundle):
    r = runner.invoke(cli, ["flash", str(fake_bundle()), "--to", "ftp://x/y"])
    assert r.exit_code == 1 and "dir:" in r.output


def test_device_run_without_model(runner, tmp_path):
    r = runner.invoke(cli, ["device", "run", "--home", str(tmp_path), "--id", "d1", "--once"])
    assert r.exit_code == 1 and "no installed model" in r.output


def test_fleet_status_unreachable_broker(runner):
    from edgemeta.fleet import free_port

    r = runner.invoke(cli, ["fleet", "status", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                            "--json", "--wait", "0"])
    assert r.exit_code == 1 and "Error:" in r.output


def test_train_convert_enroll_classify(runner, tmp_path):
    """The host commands on a tiny scale, then the board commands on the result."""
    require_module("tensorflow")
    run_dir = tmp_path / "run"
    r = runner.invoke(cli, ["train", "--data", "synthetic:30", "--out", str(run_dir), "--way", "5",
                            "--shot", "1", "--query", "2", "--episodes", "6", "--filters", "8"])
    assert r.exit_code == 0, r.output
    assert (run_dir / "model.keras").is_file()
    bundle = tmp_path / "m.edgemeta"
    r = runner.invoke(cli, ["convert", str(run_dir), "--out", str(bundle), "--version", "2.0.0",
                            "--eval-episodes", "5"])
    assert r.exit_code == 0, r.output
    assert "int8" in r.output and "float" in r.output and bundle.is_file()
    home = tmp_path / "home"
    assert runner.invoke(cli, ["board", "init", str(home), "--allow-unsigned"]).exit_code == 0
    assert runner.invoke(cli, ["flash", str(bundle), "--to", f"dir:{home}"]).exit_code == 0
    from PIL import Image
    import numpy as np
    img = np.full((40, 40), 255, np.uint8)
    img[10:30, 18:22] = 0
    Image.fromarray(img).save(tmp_path / "a.png")
    r = runner.invoke(cli, ["enroll", str(home), "bar", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["classify", str(home), str(tmp_path / "a.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["label"] == "bar"
    r = runner.invoke(cli, ["classify", str(home), str(tmp_path / "run" / "run.json")])
    assert r.exit_code == 1 and "not a readable image" in r.output


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "synthetic:abc", "--out", "OUT"], "synthetic:N"),
    (["train", "--data", "/no/such/data", "--out", "OUT"], "does not exist"),
    (["train", "--data", "synthetic:30", "--out", "OUT", "--way", "1"], "n_way must be"),
    (["convert", "RUN", "--out", "OUT/x.edgemeta"], "not a training run"),
])
def test_host_commands_reject_bad_input_in_one_line(runner, tmp_path, args, message):
    (tmp_path / "RUN").mkdir()
    args = [a.replace("OUT", str(tmp_path / "out")).replace("RUN", str(tmp_path / "RUN"))
            for a in args]
    r = runner.invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()  # nothing created for a run that could not start


def test_adapt_reports_and_exports(runner, tmp_path):
    """A tiny fomaml run adapted to a 'site' of unseen glyphs: report + int8 bundle."""
    require_module("tensorflow")
    from edgemeta.data import make_glyph_dataset, write_image_folder

    run_dir = tmp_path / "run"
    r = runner.invoke(cli, ["train", "--data", "synthetic:30", "--out", str(run_dir), "--algorithm",
                            "fomaml", "--way", "5", "--shot", "1", "--query", "2", "--episodes",
                            "6", "--filters", "8", "--inner-steps", "2"])
    assert r.exit_code == 0, r.output
    site = make_glyph_dataset(n_classes=3, per_class=4, seed=77)
    write_image_folder(site, tmp_path / "site")
    r = runner.invoke(cli, ["convert", str(run_dir), "--out", str(tmp_path / "m.edgemeta"),
                            "--eval-episodes", "3", "--tta-shift", "2", "--board", "rpi-4b"])
    assert r.exit_code == 0, r.output
    from edgemeta.bundle import generate_keypair, read_bundle
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    # The bundle records its run, so a user can adapt "the bundle" directly.
    r = runner.invoke(cli, ["adapt", str(tmp_path / "m.edgemeta"), "--support", str(tmp_path / "site"),
                            "--out", str(tmp_path / "site.edgemeta"), "--version", "1.1.0",
                            "--steps", "3", "--sign-key", str(tmp_path / "k.pem")])
    assert r.exit_code == 0, r.output
    assert "prototypes, original model" in r.output and "adapted model" in r.output
    source = read_bundle(tmp_path / "m.edgemeta").manifest
    adapted = read_bundle(tmp_path / "site.edgemeta")
    m = adapted.manifest
    assert m.version == "1.1.0" and m.provenance.extra["adapt_steps"] == 3
    assert 0.0 <= m.provenance.extra["adapted_accuracy"] <= 1.0
    # What the board does with the model is kept; the install health check has its vector.
    assert m.test_time_shifts == source.test_time_shifts and len(m.test_time_shifts) == 4
    assert m.boards == ("rpi-4b",) and m.name == source.name
    assert m.self_test is not None and adapted.signature is not None


def test_flash_refuses_downgrade_unless_allowed(runner, tmp_path):
    from dataclasses import replace

    from edgemeta.bundle import pack_bundle

    b = read_bundle(SHIPPED)
    old = pack_bundle(replace(b.manifest, version="0.9.0"), b.model, tmp_path / "old.edgemeta")
    home = tmp_path / "board"
    assert runner.invoke(cli, ["board", "init", str(home), "--allow-unsigned"]).exit_code == 0
    assert runner.invoke(cli, ["flash", str(SHIPPED), "--to", f"dir:{home}"]).exit_code == 0
    r = runner.invoke(cli, ["flash", str(old), "--to", f"dir:{home}"])
    assert r.exit_code == 1 and "older than the current version" in r.output
    assert "--allow-downgrade" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["flash", str(old), "--to", f"dir:{home}", "--allow-downgrade"])
    assert r.exit_code == 0 and "installed 0.9.0" in r.output, r.output
