"""What a board refuses: unsigned or wrongly signed bundles, downgrades, other boards' bundles,
archive tricks, a full disk. Each refusal leaves the board exactly as it was."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import zipfile
from collections import namedtuple

import pytest

from edgemeta.bundle import (
    BoardHome,
    compare_versions,
    generate_keypair,
    init_home,
    read_bundle,
    read_config,
    sign_bundle,
)
from edgemeta.errors import BundleError, InstallError, SignatureError
from firmware_bridge import install_bundle


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys" / "a.key"), generate_keypair(tmp_path / "keys" / "b.key")


@pytest.fixture
def strict_home(tmp_path, keys):
    """A home trusting key A only, signatures required (the default)."""
    root = tmp_path / "strict"
    init_home(root, trust=[keys[0].public_path])
    return root


def _refused(src, home, reason, match, snapshot, **kw):
    before = snapshot(home)
    with pytest.raises(InstallError, match=match) as info:
        install_bundle(src, home, **kw)
    assert info.value.reason == reason
    assert snapshot(home) == before
    return info.value


def test_default_home_refuses_unsigned(make_bundle, tmp_path, snapshot):
    home = tmp_path / "fresh"
    init_home(home)
    assert read_config(home).allow_unsigned is False
    err = _refused(make_bundle("1.0.0"), home, "unsigned", "is not signed", snapshot)
    assert "edgemeta bundle sign" in str(err)


def test_refused_install_into_a_missing_home_leaves_no_folder(make_bundle, tmp_path):
    """The home is created for the install; refused, it is removed again (only if empty)."""
    home = tmp_path / "card" / "edgemeta"
    home.parent.mkdir()
    with pytest.raises(InstallError) as info:
        install_bundle(make_bundle("1.0.0"), home)  # unsigned, and a new home trusts no one
    assert info.value.reason == "unsigned"
    assert not home.exists() and home.parent.is_dir()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InstallError):
        install_bundle(make_bundle("1.0.0"), existing)
    assert existing.is_dir()  # a folder that was already there is never removed


def test_signed_by_trusted_key_installs(make_bundle, strict_home, keys):
    src = make_bundle("1.0.0")
    sign_bundle(src, keys[0].private_path)
    r = install_bundle(src, strict_home)
    assert r.changed and r.trust == f"signed by trusted key {keys[0].key_id}"


def test_signed_by_untrusted_key_is_refused(make_bundle, strict_home, keys, snapshot):
    src = make_bundle("1.0.0")
    sign_bundle(src, keys[1].private_path)
    _refused(src, strict_home, "bad-signature", f"key {keys[1].key_id}, which this board does not "
             "trust", snapshot)


def _rezip(src, members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    src.write_bytes(buf.getvalue())


def test_manifest_changed_after_signing_is_refused(make_bundle, strict_home, keys, snapshot):
    src = make_bundle("1.0.0")
    sign_bundle(src, keys[0].private_path)
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["distance"] = "cosine"  # a change that still parses and matches the model hash
    members["manifest.json"] = json.dumps(manifest).encode()
    _rezip(src, members.items())
    _refused(src, strict_home, "bad-signature", "altered after it was signed", snapshot)


def test_bad_signature_from_trusted_key_refused_even_when_unsigned_allowed(
        make_bundle, tmp_path, keys, snapshot):
    home = tmp_path / "lax"
    init_home(home, trust=[keys[0].public_path], allow_unsigned=True)
    src = make_bundle("1.0.0")
    sign_bundle(src, keys[0].private_path)
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    sig = json.loads(members["signature.json"])
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[0] ^= 0x01  # same key id, well-formed, wrong signature
    sig["signature"] = base64.b64encode(bytes(raw)).decode()
    members["signature.json"] = json.dumps(sig).encode()
    _rezip(src, members.items())
    _refused(src, home, "bad-signature", "altered after it was signed", snapshot)
    # Unsigned, or signed by a key it does not know, is fine on this explicitly lax board.
    other = make_bundle("1.0.1", seed=3)
    sign_bundle(other, keys[1].private_path)
    assert install_bundle(other, home).trust == "unsigned bundles are allowed on this board"


def test_malformed_signature_member_is_a_bundle_error(make_bundle, strict_home, snapshot):
    src = make_bundle("1.0.0")
    with zipfile.ZipFile(src) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    _rezip(src, members + [("signature.json", b"{not json")])
    with pytest.raises(SignatureError, match="signature.json is not valid JSON"):
        read_bundle(src)
    _refused(src, strict_home, "damaged", "signature.json", snapshot)


@pytest.mark.parametrize("evil", ["../model.tflite", "/etc/passwd", "models/../../x", "model.tflite/"])
def test_archive_members_that_escape_are_refused(make_bundle, home, evil, snapshot):
    src = make_bundle("1.0.0")
    with zipfile.ZipFile(src) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    _rezip(src, members + [(evil, b"x")])
    with pytest.raises(BundleError, match="expected exactly"):
        read_bundle(src)
    _refused(src, home, "damaged", "expected exactly", snapshot)
    assert not (home.parent / "x").exists() and not (home.parent / "model.tflite").exists()


def test_duplicate_member_names_are_refused(make_bundle, home, snapshot):
    src = make_bundle("1.0.0")
    with zipfile.ZipFile(src) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rezip(src, members + [members[1]])
    _refused(src, home, "damaged", "expected exactly", snapshot)


def test_downgrade_refused_unless_allowed(make_bundle, home, snapshot):
    install_bundle(make_bundle("1.10.0", seed=1), home)
    err = _refused(make_bundle("1.9.2", seed=2), home, "downgrade", "older than the current "
                   r"version 1\.10\.0", snapshot)
    assert "--allow-downgrade" in str(err)
    r = install_bundle(make_bundle("1.9.2", seed=2), home, allow_downgrade=True)
    assert r.version == "1.9.2" and BoardHome.at(home).current_version() == "1.9.2"


@pytest.mark.parametrize("a,b,expected", [
    ("1.10.0", "1.9.2", 1), ("2.0.0-rc1", "2.0.0", -1), ("1.0.0+build7", "1.0.0", 0),
    ("1.0", "1.0.1", -1), ("2026.11.23", "2026.2.1", 1), ("1.0.0-rc.2", "1.0.0-rc.10", -1),
    ("v10.0.0", "v9.0.0", 1), ("v1.2.0", "1.2.0", 0), ("1.0.0-rc10", "1.0.0-rc9", 1)])
def test_version_order(a, b, expected):
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_bundle_for_another_board_is_refused(make_bundle, tmp_path, snapshot):
    home = tmp_path / "pi5"
    init_home(home, allow_unsigned=True, board="rpi-5")
    _refused(make_bundle("1.0.0", boards=("rpi-zero-2w",)), home, "board-mismatch",
             r"built for rpi-zero-2w, not for this board \(rpi-5\)", snapshot)
    # The profile check itself runs too: a float model does not fit a Pi.
    _refused(make_bundle("1.0.1", dtype="float32"), home, "board-mismatch", "does not fit rpi-5",
             snapshot)
    assert install_bundle(make_bundle("1.0.2", boards=("rpi-5", "rpi-4b")), home).changed


def test_disk_full_before_writing_says_so(make_bundle, home, monkeypatch, snapshot):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    err = _refused(make_bundle("1.1.0", seed=2), home, "disk-full", "disk is full", snapshot)
    assert "1.0.0 stays current" in str(err)


def test_disk_full_during_write_keeps_old_model(make_bundle, home, monkeypatch, snapshot):
    install_bundle(make_bundle("1.0.0", seed=1), home)
    src = make_bundle("1.1.0", seed=2)
    real_fsync = os.fsync

    def enospc(fd):  # the card fills up while the new bundle is being written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    err = _refused(src, home, "disk-full", "disk filled up", snapshot)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "1.0.0 stays current" in str(err)


def test_damaged_board_config_fails_closed(make_bundle, home, snapshot):
    (home / "board.json").write_text('{"schema": 1, "allow_unsigned": "yes"}')
    with pytest.raises(BundleError, match="allow_unsigned"):
        read_config(home)
    _refused(make_bundle("1.0.0"), home, "io", "board.json", snapshot)


def test_init_home_adds_keys_and_keeps_settings(tmp_path, keys):
    home = tmp_path / "h"
    init_home(home, trust=[keys[0].public_path], allow_unsigned=True, board="rpi-4b")
    init_home(home, trust=[keys[1].public_path])
    config = read_config(home)
    assert config.allow_unsigned and config.board == "rpi-4b"
    assert sorted(p.stem for p in (home / "trust").glob("*.pub")) == sorted(k.key_id for k in keys)
    with pytest.raises(Exception, match="rpi-99"):
        init_home(home, board="rpi-99")
    assert read_config(home).board == "rpi-4b"


def test_key_that_appears_meanwhile_is_not_overwritten_and_no_half_pair_is_left(
        tmp_path, monkeypatch):
    import edgemeta.bundle.signing as signing

    private, public = tmp_path / "r.key", tmp_path / "r.key.pub"
    real = signing.atomic_create_bytes

    def racing(path, data, mode=None):
        if path == public:  # another process writes the public key after our existence check
            public.write_bytes(b"someone else's key")
        return real(path, data, mode=mode)

    monkeypatch.setattr(signing, "atomic_create_bytes", racing)
    with pytest.raises(SignatureError, match="r.key.pub already exists"):
        generate_keypair(private)
    assert public.read_bytes() == b"someone else's key"  # theirs, untouched
    assert not private.exists()  # ours removed: a private key without its public one is useless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.key.pub"]  # no temporary files
    with pytest.raises(SignatureError, match="two different paths"):
        generate_keypair(tmp_path / "s.key", tmp_path / "sub" / ".." / "s.key")


def test_key_files_are_checked(tmp_path, keys):
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(keys[0].private_path)
    assert oct(keys[0].private_path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SignatureError, match="not a PEM public key"):
        init_home(tmp_path / "h", trust=[keys[0].private_path])
    with pytest.raises(SignatureError, match="does not exist"):
        init_home(tmp_path / "h", trust=[tmp_path / "nope.pub"])
    assert not (tmp_path / "h" / "trust").exists()


def test_microcontroller_profiles_are_refused_with_a_hint(make_bundle, home, tmp_path, snapshot):
    from edgemeta.errors import FlashError
    from firmware_bridge import flash

    with pytest.raises(FlashError, match="edgemeta export c"):
        flash(make_bundle("1.0.0"), f"dir:{home}", board="esp32-s3")
    mcu_home = tmp_path / "mcu"
    init_home(mcu_home, allow_unsigned=True, board="arduino-nano-33-ble-sense")
    _refused(make_bundle("1.0.1"), mcu_home, "board-mismatch", "edgemeta export c", snapshot)


@pytest.mark.parametrize("bad", ["2.0.0\n", "2.0.0\r\n", " 2.0.0", "../2", "a" * 65, ""])
def test_versions_that_are_not_plain_names_are_refused(make_bundle, bad):
    from edgemeta.bundle import validate_version

    with pytest.raises(BundleError, match="not valid"):
        validate_version(bad)


def test_failed_switch_keeps_the_previous_record(make_bundle, home, monkeypatch):
    """`previous` is written before the pointer switch; if the switch fails it is restored."""
    from edgemeta.bundle import BoardHome
    from firmware_bridge import PREVIOUS_POINTER, rollback

    install_bundle(make_bundle("1.0.0", seed=1), home)
    install_bundle(make_bundle("1.1.0", seed=2), home)
    assert (home / PREVIOUS_POINTER).read_text() == "1.0.0\n"

    def broken(self, version):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(BoardHome, "set_current", broken)
    with pytest.raises(InstallError, match="1.1.0 stays current"):
        install_bundle(make_bundle("1.2.0", seed=3), home)
    monkeypatch.undo()
    assert (home / PREVIOUS_POINTER).read_text() == "1.0.0\n"
    assert rollback(home) == "1.0.0"
