"""train / convert / adapt on bad input: one ``Error:`` line, exit status 1, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.cli import cli  # noqa: E402
from edgemeta.data import make_glyph_dataset, write_image_folder  # noqa: E402

TINY = ["--way", "3", "--shot", "1", "--query", "1", "--episodes", "2", "--filters", "4"]


def one_error_line(r, *needles: str) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.output.startswith("Error: "), r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    for needle in needles:
        assert needle in r.output, r.output
    return r.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run with a checkpoint (copied by tests that damage it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.mark.parametrize("damage", [b"", b"garbage", "half"])
def test_resume_from_a_damaged_checkpoint(run_copy, damage):
    ckpt = run_copy / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2] if damage == "half" else damage)
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(run_copy),
                                 *TINY, "--resume"])
    one_error_line(r, "checkpoint.npz", "--resume")


def test_resume_on_other_data_is_refused(run_copy):
    before = (run_copy / "model.keras").read_bytes()
    for other in (["--data", "synthetic:25"], ["--data", "synthetic:20", "--test-fraction", "0.5"],
                  ["--data", "synthetic:20", "--rotations"]):
        r = CliRunner().invoke(cli, ["train", *other, "--out", str(run_copy), *TINY, "--resume"])
        one_error_line(r, "other training data")
    assert (run_copy / "model.keras").read_bytes() == before


def test_resume_with_nothing_to_resume_creates_nothing(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(tmp_path / "new"),
                                 *TINY, "--resume"])
    one_error_line(r, "nothing to resume")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes"),
    (["--minutes", "-2"], "--minutes"),
    (["--test-fraction", "1"], "test_fraction"),
    (["--test-fraction", "0"], "test_fraction"),
])
def test_train_rejects_bad_options(tmp_path, args, message):
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(tmp_path / "o"),
                                 *TINY, *args])
    one_error_line(r, message)
    assert not (tmp_path / "o").exists()


def test_train_on_an_omniglot_folder_with_a_corrupt_drawing(tmp_path):
    glyphs = make_glyph_dataset(n_classes=4, per_class=2, size=28, seed=2)
    for c in range(4):
        for j in range(2):
            path = tmp_path / "omni" / f"Alpha{c % 2}" / f"char{c}" / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(glyphs.images[2 * c + j]).save(path)
    (tmp_path / "omni" / "Alpha1" / "char3" / "1.png").write_bytes(b"\x89PNG truncated")
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "omni"), "--out",
                                 str(tmp_path / "o"), *TINY])
    one_error_line(r, "cannot read image", "char3/1.png")


def test_train_and_adapt_on_image_folders_of_mixed_sizes(tmp_path):
    """Photos come in many sizes; the board resizes any of them, so training does too."""
    data = make_glyph_dataset(n_classes=10, per_class=6, size=28, seed=4)
    folder = write_image_folder(data, tmp_path / "photos")
    for path in sorted(folder.rglob("*.png"))[::3]:
        Image.open(path).resize((40, 33)).save(path)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out", str(out),
                                 "--test-fraction", "0.5", *TINY])
    assert r.exit_code == 0, r.output
    site = write_image_folder(make_glyph_dataset(n_classes=2, per_class=2, size=50, seed=9),
                              tmp_path / "site")
    Image.new("L", (31, 20), 255).save(site / "glyph0000" / "extra.png")
    r = CliRunner().invoke(cli, ["adapt", str(out), "--support", str(site), "--out",
                                 str(tmp_path / "site.edgemeta"), "--version", "1.0.1",
                                 "--steps", "1"])
    assert r.exit_code == 0, r.output


def test_small_unseen_classes_validate_and_report_on_what_fits(tmp_path):
    """3 images per class: validation and the int8 report use 1-shot 2-query episodes of the
    unseen classes there are, instead of refusing the data."""
    data = make_glyph_dataset(n_classes=10, per_class=3, size=28, seed=4)
    folder = write_image_folder(data, tmp_path / "few")
    r = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out", str(tmp_path / "o"),
                                 "--test-fraction", "0.3", *TINY])
    assert r.exit_code == 0, r.output
    assert "val 3-way 1-shot" in r.output
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "o"), "--out",
                                 str(tmp_path / "m.edgemeta"), "--eval-episodes", "2"])
    assert r.exit_code == 0, r.output
    assert "3-way 1-shot on unseen classes" in r.output


def test_too_few_unseen_classes_for_validation_says_so(tmp_path):
    data = make_glyph_dataset(n_classes=8, per_class=3, size=28, seed=4)
    folder = write_image_folder(data, tmp_path / "few")
    r = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out", str(tmp_path / "o"),
                                 "--test-fraction", "0.1", *TINY])
    one_error_line(r, "validation", "--test-fraction")
    assert not (tmp_path / "o").exists()


def test_convert_rejects_unknown_board_and_huge_shift_before_writing(run_dir, tmp_path):
    out = tmp_path / "m.edgemeta"
    r = CliRunner().invoke(cli, ["convert", str(run_dir), "--out", str(out), "--board", "rpi-4",
                                 "--eval-episodes", "2"])
    one_error_line(r, "unknown board 'rpi-4'", "rpi-4b")
    r = CliRunner().invoke(cli, ["convert", str(run_dir), "--out", str(out), "--tta-shift", "28",
                                 "--eval-episodes", "2"])
    one_error_line(r, "--tta-shift")
    r = CliRunner().invoke(cli, ["convert", str(run_dir), "--out", str(out), "--tta-shift", "-1",
                                 "--eval-episodes", "2"])
    one_error_line(r, "--tta-shift")
    assert not out.exists()


def test_convert_a_run_with_a_damaged_model(run_copy, tmp_path):
    (run_copy / "model.keras").write_bytes(b"not a keras archive")
    r = CliRunner().invoke(cli, ["convert", str(run_copy), "--out", str(tmp_path / "m.edgemeta")])
    one_error_line(r, "model.keras")


def test_train_into_a_folder_it_cannot_create_is_one_line(tmp_path):
    """An OSError from a host command (here: --out under a file) is one line, like the board
    commands', not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out",
                                 str(blocker / "run"), *TINY])
    one_error_line(r, str(blocker), "expected a folder there")
    assert "meta-train" not in r.output  # refused before training, not after it


def test_minutes_alone_is_a_time_budget_not_400_steps(tmp_path):
    import json

    from edgemeta.meta import UNLIMITED_EPISODES

    small = [a for a in TINY if a not in ("--episodes", "2")]
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(tmp_path / "a"),
                                 "--minutes", "0.01", *small])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert config["episodes"] == UNLIMITED_EPISODES and config["time_budget_s"] == 0.6
    # The bar counts steps without a total (not "x/10000000" with an ETA in months).
    assert "meta-train" in r.output and "10000000" not in r.output, r.output
    r = CliRunner().invoke(cli, ["train", "--data", "synthetic:20", "--out", str(tmp_path / "b"),
                                 "--minutes", "5", "--episodes", "3", *small])
    assert r.exit_code == 0, r.output
    assert "trained 3 episodes" in r.output  # both given: whichever comes first
    config = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert config["episodes"] == 3
