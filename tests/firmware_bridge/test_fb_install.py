"""install_bundle / rollback / installed: layout, idempotence, immutability, atomicity, pruning."""

from __future__ import annotations

import errno
import io
import os
import zipfile

import pytest

from edgemeta.bundle import BoardHome, bundle_bytes, read_bundle
from edgemeta.errors import FlashError
from firmware_bridge import PREVIOUS_POINTER, install_bundle, installed, rollback


def test_first_install_lays_out_home_and_pointer(make_bundle, home):
    src = make_bundle("1.0.0")
    result = install_bundle(src, home)
    assert result.version == "1.0.0" and result.changed and result.previous_version is None
    assert result.path == home.resolve() / "models" / "1.0.0" / "model.edgemeta"
    assert (home / "current").read_text() == "1.0.0\n"
    assert result.path.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in home.iterdir()) == ["board.json", "current", "models"]
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.edgemeta"]
    assert BoardHome.at(home).current_bundle() == result.path
    assert installed(home) == ["1.0.0"]


def test_reinstall_same_bundle_is_a_noop(make_bundle, home, snapshot):
    src = make_bundle("1.0.0")
    install_bundle(src, home)
    before = snapshot(home)
    again = install_bundle(src, home)
    assert again.changed is False and again.version == "1.0.0"
    assert snapshot(home) == before


def test_repack_with_new_created_at_is_still_the_same_version(make_bundle, home):
    install_bundle(make_bundle("1.0.0", name="a.edgemeta"), home)
    repacked = make_bundle("1.0.0", name="b.edgemeta", created_at="2025-06-01T00:00:00+00:00")
    assert install_bundle(repacked, home).changed is False


def test_second_version_switches_pointer_and_keeps_previous(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    result = install_bundle(make_bundle("1.1.0", seed=2), home)
    assert (result.version, result.previous_version, result.changed) == ("1.1.0", "1.0.0", True)
    assert BoardHome.at(home).current_version() == "1.1.0"
    assert set(installed(home)) == {"1.0.0", "1.1.0"}
    assert (home / PREVIOUS_POINTER).read_text() == "1.0.0\n"


def test_same_version_different_model_is_refused_and_nothing_changes(make_bundle, home, snapshot):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    with pytest.raises(FlashError, match=r"1\.0\.0 is already installed with a different model.*bump"):
        install_bundle(make_bundle("1.0.0", seed=2), home)
    assert snapshot(home) == before


def test_same_version_same_model_different_manifest_is_refused(make_bundle, home, snapshot):
    install_bundle(make_bundle("1.0.0", name="a.edgemeta"), home)
    before = snapshot(home)
    with pytest.raises(FlashError, match=r"different manifest \(fields \['embedding_dim'\]\)"):
        install_bundle(make_bundle("1.0.0", name="b.edgemeta", embedding_dim=32), home)
    assert snapshot(home) == before


def _model_offset(data: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("model.tflite")
    # Stored member: data starts after the 30-byte local header, the name and the extra field.
    header = data[info.header_offset:info.header_offset + 30]
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(
        header[28:30], "little")


def test_flipped_byte_in_model_is_refused_previous_stays(make_bundle, home, snapshot, tmp_path):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    data = bytearray(make_bundle("2.0.0", seed=2).read_bytes())
    off = _model_offset(bytes(data))
    assert data[off:off + 4] == b"TFL3"  # we really are inside the model
    data[off + 100] ^= 0xFF
    bad = tmp_path / "flipped.edgemeta"
    bad.write_bytes(bytes(data))
    with pytest.raises(FlashError, match=r"flipped\.edgemeta.*nothing was changed"):
        install_bundle(bad, home)
    assert snapshot(home) == before


def test_model_swapped_with_valid_zip_is_refused_as_tampered(make_bundle, manifest_for, home,
                                                           snapshot, tmp_path):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    genuine = read_bundle(make_bundle("2.0.0", seed=2))
    evil = genuine.model[:-1] + bytes([genuine.model[-1] ^ 1])
    # Re-zip with correct CRCs so only the manifest's SHA-256 can catch it.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", genuine.manifest.to_json())
        zf.writestr("model.tflite", evil)
    bad = tmp_path / "evil.edgemeta"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(FlashError, match="tampered"):
        install_bundle(bad, home)
    assert snapshot(home) == before


def test_truncated_bundle_is_refused_previous_stays(make_bundle, home, snapshot, tmp_path):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    data = make_bundle("2.0.0", seed=2).read_bytes()
    bad = tmp_path / "truncated.edgemeta"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlashError, match="truncated"):
        install_bundle(bad, home)
    assert snapshot(home) == before


def test_missing_bundle_names_the_path(home, tmp_path):
    with pytest.raises(FlashError, match=r"nope\.edgemeta: no such file"):
        install_bundle(tmp_path / "nope.edgemeta", home)
    assert [p.name for p in home.iterdir()] == ["board.json"]


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("victim", ["replace", "fsync"])
def test_disk_full_while_copying_leaves_previous_current(make_bundle, home, snapshot, monkeypatch,
                                                          victim):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    src = make_bundle("2.0.0", seed=2)
    monkeypatch.setattr(os, victim, _enospc)
    with pytest.raises(FlashError, match=r"No space left.*1\.0\.0 stays current"):
        install_bundle(src, home)
    monkeypatch.undo()
    assert snapshot(home) == before  # no models/2.0.0, no temp file, same pointer


def test_failure_when_switching_pointer_rolls_back_the_copy(make_bundle, home, snapshot,
                                                            monkeypatch):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)

    def broken_set_current(self, version):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(BoardHome, "set_current", broken_set_current)
    with pytest.raises(FlashError, match="I/O error"):
        install_bundle(make_bundle("2.0.0", seed=2), home)
    monkeypatch.undo()
    assert snapshot(home) == before


def test_first_install_failure_leaves_nothing_behind(make_bundle, home, monkeypatch):
    src = make_bundle("1.0.0")
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(FlashError, match="nothing is current"):
        install_bundle(src, home)
    monkeypatch.undo()
    assert sorted(p.name for p in home.rglob("*")) == ["board.json", "models"]
    assert BoardHome.at(home).current_version() is None


def test_stale_temp_files_from_a_killed_install_are_swept(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    crashed = home / "models" / "9.9.9"
    crashed.mkdir()
    (crashed / ".model.edgemeta.tmp-12345").write_bytes(b"half")
    install_bundle(make_bundle("1.1.0", seed=2), home)
    assert not crashed.exists()


def test_rollback_switches_back_and_toggles(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    install_bundle(make_bundle("2.0.0", seed=2), home)
    assert rollback(home) == "1.0.0"
    assert BoardHome.at(home).current_version() == "1.0.0"
    assert rollback(home) == "2.0.0"  # undo the rollback
    assert BoardHome.at(home).current_version() == "2.0.0"


def test_reflashing_an_installed_version_after_rollback_only_moves_the_pointer(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    src2 = make_bundle("2.0.0", seed=2)
    install_bundle(src2, home)
    rollback(home)
    result = install_bundle(src2, home)
    assert (result.version, result.previous_version, result.changed) == ("2.0.0", "1.0.0", True)
    assert BoardHome.at(home).current_version() == "2.0.0"


def test_rollback_without_previous_version_fails(make_bundle, home, tmp_path):
    with pytest.raises(FlashError, match="does not exist"):
        rollback(tmp_path / "missing")
    with pytest.raises(FlashError, match="no installed model"):
        rollback(home)
    install_bundle(make_bundle("1.0.0"), home)
    with pytest.raises(FlashError, match=r"no previous version.*from 1\.0\.0"):
        rollback(home)
    assert BoardHome.at(home).current_version() == "1.0.0"


def test_rollback_refuses_a_damaged_previous_bundle(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    install_bundle(make_bundle("2.0.0", seed=2), home)
    old = BoardHome.at(home).bundle_path("1.0.0")
    old.write_bytes(old.read_bytes()[:100])
    with pytest.raises(FlashError, match=r"cannot roll back to 1\.0\.0.*2\.0\.0 stays current"):
        rollback(home)
    assert BoardHome.at(home).current_version() == "2.0.0"


def test_rollback_without_record_uses_install_order(make_bundle, home):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    install_bundle(make_bundle("2.0.0", seed=2), home)
    (home / PREVIOUS_POINTER).unlink()
    os.utime(home / "models" / "1.0.0", (1_000_000, 1_000_000))  # clearly older
    assert rollback(home) == "1.0.0"


def test_pruning_keeps_current_and_previous(make_bundle, home):
    for i, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        result = install_bundle(make_bundle(version, seed=i), home)
    assert result.pruned == ("1.0.0",)
    assert set(installed(home)) == {"2.0.0", "3.0.0"}
    assert not (home / "models" / "1.0.0").exists()


def test_pruning_never_removes_the_old_current_even_if_it_is_oldest(make_bundle, home):
    for i, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        install_bundle(make_bundle(version, seed=i), home, keep=3)
    assert rollback(home) == "2.0.0"
    # Make 2.0.0 look oldest: install order alone would prune it first.
    os.utime(home / "models" / "2.0.0", (1_000_000, 1_000_000))
    os.utime(home / "models" / "1.0.0", (2_000_000, 2_000_000))
    result = install_bundle(make_bundle("4.0.0", seed=4), home, keep=2)
    assert result.previous_version == "2.0.0"
    assert set(result.pruned) == {"1.0.0", "3.0.0"}
    assert set(installed(home)) == {"2.0.0", "4.0.0"}
    assert rollback(home) == "2.0.0"


def test_keep_three_keeps_one_more(make_bundle, home):
    for i, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        install_bundle(make_bundle(version, seed=i), home, keep=3)
    assert set(installed(home)) == {"1.0.0", "2.0.0", "3.0.0"}


@pytest.mark.parametrize("keep", [1, 0, True, 2.5])
def test_bad_keep_is_refused_before_touching_anything(make_bundle, home, keep):
    with pytest.raises(FlashError, match="keep is .*expected an integer >= 2"):
        install_bundle(make_bundle("1.0.0"), home, keep=keep)
    assert [p.name for p in home.iterdir()] == ["board.json"]


def test_home_with_missing_parent_is_refused(make_bundle, tmp_path):
    with pytest.raises(FlashError, match="neither does its parent"):
        install_bundle(make_bundle("1.0.0"), tmp_path / "no" / "such" / "board")
    assert not (tmp_path / "no").exists()


def test_home_that_is_a_file_is_refused(make_bundle, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(FlashError, match="is not a directory"):
        install_bundle(make_bundle("1.0.0"), target)


def test_board_check_refuses_a_float_model(make_bundle, home):
    with pytest.raises(FlashError, match=r"does not fit rpi-4b: the model input is float32"):
        install_bundle(make_bundle("1.0.0", dtype="float32"), home, board="rpi-4b")
    assert [p.name for p in home.iterdir()] == ["board.json"]


def test_board_check_unknown_board(make_bundle, home):
    with pytest.raises(FlashError, match=r"unknown board 'rpi-9'.*rpi-4b"):
        install_bundle(make_bundle("1.0.0"), home, board="rpi-9")


def test_board_check_passes_for_a_fitting_model(make_bundle, home):
    assert install_bundle(make_bundle("1.0.0"), home, board="rpi-zero-2w").changed


def test_damaged_installed_copy_of_current_is_repaired(make_bundle, home):
    src = make_bundle("1.0.0")
    result = install_bundle(src, home)
    result.path.write_bytes(b"garbage")
    repaired = install_bundle(src, home)
    assert repaired.changed and result.path.read_bytes() == src.read_bytes()
    assert BoardHome.at(home).current_version() == "1.0.0"


def test_installed_bytes_are_the_bundle_bytes(make_bundle, home):
    src = make_bundle("1.0.0")
    bundle = read_bundle(src)
    result = install_bundle(src, home)
    assert result.path.read_bytes() == bundle_bytes(bundle.manifest, bundle.model)


def test_concurrent_install_is_refused_while_home_is_locked(make_bundle, home, snapshot):
    import fcntl

    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    fd = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another installer holds the home
        with pytest.raises(FlashError, match="busy: another install or rollback"):
            install_bundle(make_bundle("2.0.0", seed=2), home)
        with pytest.raises(FlashError, match="busy"):
            rollback(home)
    finally:
        os.close(fd)
    assert snapshot(home) == before
    assert install_bundle(make_bundle("2.0.0", seed=2), home).changed  # lock released


def test_copy_that_lands_damaged_is_caught_and_removed(make_bundle, home, snapshot, monkeypatch):
    import firmware_bridge.install as install_mod

    install_bundle(make_bundle("1.0.0", seed=1), home)
    before = snapshot(home)
    real_write = install_mod.atomic_write_bytes

    def flaky_card(path, data):  # the write "succeeds" but a bit flips on the way to the card
        real_write(path, data[:50] + bytes([data[50] ^ 1]) + data[51:])

    monkeypatch.setattr(install_mod, "atomic_write_bytes", flaky_card)
    with pytest.raises(FlashError, match=r"differs from the bundle.*1\.0\.0 stays current"):
        install_bundle(make_bundle("2.0.0", seed=2), home)
    monkeypatch.undo()
    assert snapshot(home) == before
