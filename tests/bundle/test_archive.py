import io
import json
import zipfile

import pytest

from edgemeta.bundle import Manifest, bundle_bytes, read_bundle
from edgemeta.errors import BundleError
from tests.conftest import fake_manifest


def _rewrite(path, **members):
    with zipfile.ZipFile(path) as zf:
        content = {n: zf.read(n) for n in zf.namelist()}
    content.update(members)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in content.items():
            zf.writestr(n, d)
    path.write_bytes(buf.getvalue())


def test_round_trip_and_deterministic_bytes(fake_bundle):
    path = fake_bundle()
    b = read_bundle(path)
    assert b.manifest.version == "1.0.0"
    assert b.manifest.input.shape == (None, 28, 28, 1)
    assert b.manifest.input.preprocessing.size == (28, 28)
    assert bundle_bytes(b.manifest, b.model) == path.read_bytes()


def test_tampered_model_is_named(fake_bundle):
    path = fake_bundle()
    model = bytearray(read_bundle(path).model)
    model[100] ^= 0xFF
    _rewrite(path, **{"model.tflite": bytes(model)})
    with pytest.raises(BundleError, match="does not match its manifest"):
        read_bundle(path)


def test_flipped_byte_in_file_is_detected(fake_bundle):
    path = fake_bundle()
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01  # inside the stored model: the zip CRC or the hash catches it
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        read_bundle(path)


@pytest.mark.parametrize("keep", [10, 500, 1500])
def test_truncated_bundle(fake_bundle, keep):
    path = fake_bundle()
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(BundleError, match="truncated|not a readable"):
        read_bundle(path)


def test_extra_member_and_bad_manifest(fake_bundle):
    path = fake_bundle()
    _rewrite(path, **{"../evil.sh": b"x"})
    with pytest.raises(BundleError, match="expected exactly"):
        read_bundle(path)
    path = fake_bundle(name="b.edgemeta")
    _rewrite(path, **{"manifest.json": b"{not json"})
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(path)


def test_manifest_validation_messages():
    m = json.loads(fake_manifest(b"abc").to_json())
    with pytest.raises(BundleError, match="schema_version"):
        Manifest.from_dict({**m, "schema_version": 99})
    with pytest.raises(BundleError, match="unknown field"):
        Manifest.from_dict({**m, "surprise": 1})
    with pytest.raises(BundleError, match="required field 'input'"):
        Manifest.from_dict({k: v for k, v in m.items() if k != "input"})
    with pytest.raises(BundleError, match="version"):
        Manifest.from_dict({**m, "version": "../../etc"})


def test_missing_file():
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle("/nonexistent/x.edgemeta")


def test_written_bundle_has_ordinary_permissions(fake_bundle):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (fake_bundle().stat().st_mode & 0o777) == (0o666 & ~umask)


def test_shipped_omniglot_bundle_is_valid():
    """The bundle in models/ verifies, is full-int8 and within the size budget (0.3 MB)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
    b = read_bundle(path)
    assert b.manifest.input.dtype == "int8" and path.stat().st_size <= 300_000
    # Three views per classification (the image and its two diagonal shifts) fit 0.2 ms on the
    # slower of the two machines measured (docs/benchmarks.md).
    assert b.manifest.test_time_shifts == ((3, 3), (-3, -3))
    assert b.manifest.self_test is not None  # checked by the board before it switches


def _signed(tmp_path):
    from edgemeta.bundle import generate_keypair, pack_bundle

    keys = generate_keypair(tmp_path / "k")
    model = b"TFL3" + bytes(range(256))
    return pack_bundle(fake_manifest(model), model, tmp_path / "s.edgemeta",
                       signing_key=keys.private_path).read_bytes()


def _central_entries(data: bytes):
    """Offsets of the central-directory file headers (signature PK\\x01\\x02)."""
    at, found = 0, []
    while (at := data.find(b"PK\x01\x02", at)) != -1:
        found.append(at)
        at += 4
    return found


@pytest.mark.parametrize("patch", ["encrypted", "version", "offset", "name"])
def test_tampered_zip_headers_are_bundle_errors(tmp_path, patch):
    """Header tampering that the zip module reports with other exception types (RuntimeError,
    NotImplementedError, ValueError, UnicodeDecodeError) is still a BundleError."""
    data = bytearray(_signed(tmp_path))
    cd = _central_entries(bytes(data))[0]
    if patch == "encrypted":
        data[cd + 8] |= 0x01  # general-purpose flag bit 0: encrypted
    elif patch == "version":
        data[cd + 6] = 250  # "version needed to extract" far beyond what zipfile supports
    elif patch == "offset":
        # End-of-central-directory record: claim the directory starts later than it does, so
        # zipfile computes negative member offsets (ValueError: negative seek value).
        eocd = bytes(data).rfind(b"PK\x05\x06")
        start = int.from_bytes(data[eocd + 16:eocd + 20], "little")
        data[eocd + 16:eocd + 20] = (start + 1000).to_bytes(4, "little")
    else:
        data[cd + 9] |= 0x08  # flag bit 11: the name is UTF-8 ...
        data[cd + 46] = 0xFF  # ... but it is not
    with pytest.raises(BundleError):
        read_bundle(bytes(data))


def test_random_byte_flips_only_ever_give_bundle_errors(tmp_path):
    import numpy as np

    data = _signed(tmp_path)
    original = read_bundle(data)
    rng = np.random.default_rng(7)
    refused = 0
    for _ in range(3000):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        try:
            got = read_bundle(bytes(b))
        except BundleError:
            refused += 1
            continue
        # A flip that is not refused landed where it changes nothing that is read.
        assert got.model == original.model and got.manifest == original.manifest
        assert got.signature == original.signature
    assert refused > 1500  # most bytes matter


def test_hostile_signature_json_is_a_signature_error():
    from edgemeta.bundle import Signature
    from edgemeta.errors import SignatureError

    for raw in (json.dumps({"algorithm": "ed25519", "key_id": "0" * 16,
                            "signature": "\u00e9" * 88}).encode(),  # non-ASCII "base64"
                b"[" * 100_000 + b"]" * 100_000):  # RecursionError in the decoder
        with pytest.raises(SignatureError):
            Signature.from_json(raw)


def test_unreadable_bundle_file_is_a_bundle_error(fake_bundle, monkeypatch):
    from pathlib import Path

    path = fake_bundle()

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(BundleError, match="cannot read"):
        read_bundle(path)


def test_write_errors_name_the_users_path_not_a_temporary_one(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    from edgemeta.bundle import atomic_write_bytes

    target = tmp_path / "glyphs.edgemeta"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"x" * 100)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    monkeypatch.undo()
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, **kwargs):  # what mkstemp raises in a read-only folder
        name = os.path.join(kwargs["dir"], kwargs["prefix"] + "k3j2")
        raise PermissionError(errno.EACCES, "Permission denied", name)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(target, b"x")
    assert info.value.filename == str(target)
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
