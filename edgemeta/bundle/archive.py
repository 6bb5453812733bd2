"""Reading and writing ``NAME.edgemeta`` files: a zip holding ``manifest.json`` and ``model.tflite``
(and ``signature.json`` when signed, see :mod:`edgemeta.bundle.signing`).

A zip (stored, not deflated: int8 weights barely compress) is readable with any unzip tool, has
a CRC per member, and a central directory at the end, so truncation is always detected.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.manifest import Manifest
from edgemeta.bundle.signing import SIGNATURE_NAME, Signature, load_private_key, sign_manifest
from edgemeta.errors import BundleError

__all__ = ["Bundle", "BUNDLE_SUFFIX", "MANIFEST_NAME", "MODEL_NAME", "MAX_BUNDLE_BYTES",
           "pack_bundle", "read_bundle", "bundle_bytes", "sha256_hex", "sign_bundle"]

BUNDLE_SUFFIX = ".edgemeta"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
# A board should never be asked to unpack something huge by accident (or on purpose).
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
_MEMBERS = {MANIFEST_NAME, MODEL_NAME}
# Exact names only: no paths, so no member can ever point outside where a bundle is unpacked.
_SIGNED_MEMBERS = _MEMBERS | {SIGNATURE_NAME}
# Fixed timestamp so that packing the same model twice gives identical bytes.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
# What zipfile raises on damaged or tampered headers besides BadZipFile: negative seeks and
# undecodable names (ValueError), "encrypted" flags (RuntimeError), unknown versions and
# compression flags (NotImplementedError). All mean the same thing here: not a valid bundle.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
               NotImplementedError)


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle in memory.

    Attributes:
        manifest: The parsed manifest.
        model: The ``.tflite`` bytes (their SHA-256 matches the manifest).
        manifest_json: The exact ``manifest.json`` bytes (what a signature covers).
        signature: The bundle's signature, or None if unsigned. Reading a bundle checks that the
            signature is well-formed, not that a trusted key made it: that is the board's
            decision (``firmware_bridge`` checks it against the keys the board trusts).
    """

    manifest: Manifest
    model: bytes
    manifest_json: bytes = b""
    signature: Signature | None = None

    @property
    def version(self) -> str:
        return self.manifest.version


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def bundle_bytes(manifest: Manifest, model: bytes, *, signing_key: Any = None) -> bytes:
    """Serialise a bundle to bytes after checking the manifest describes ``model``.

    Args:
        manifest: The manifest.
        model: The ``.tflite`` bytes.
        signing_key: A private key from :func:`~edgemeta.bundle.signing.load_private_key` (or a
            path to one) to sign the bundle with; None leaves it unsigned.
    """
    if manifest.model_sha256 != sha256_hex(model) or manifest.model_bytes != len(model):
        raise BundleError("manifest model_sha256/model_bytes do not describe the model being packed")
    manifest_json = manifest.to_json().encode()
    members = [(MANIFEST_NAME, manifest_json), (MODEL_NAME, model)]
    if signing_key is not None:
        if isinstance(signing_key, (str, os.PathLike)):
            signing_key = load_private_key(signing_key)
        members.append((SIGNATURE_NAME, sign_manifest(manifest_json, signing_key).to_json()))
    return _zip(members)


def pack_bundle(manifest: Manifest, model: bytes, path: str | os.PathLike[str], *,
                signing_key: Any = None) -> Path:
    """Write a bundle file atomically (temporary file, fsync, rename) and return its path.

    ``signing_key`` (a loaded private key or a path to a PEM file) signs it at pack time.
    """
    out = Path(path)
    atomic_write_bytes(out, bundle_bytes(manifest, model, signing_key=signing_key))
    return out


def sign_bundle(source: str | os.PathLike[str], key: Any,
                out: str | os.PathLike[str] | None = None) -> Bundle:
    """Sign an existing bundle (replacing any previous signature) and write it atomically.

    The manifest bytes are kept exactly as they are, so the signature covers what the board
    will read.

    Args:
        source: The bundle to sign.
        key: A loaded private key or a path to a PEM private key.
        out: Where to write the signed bundle; default: replace ``source``.

    Returns:
        The signed bundle.
    """
    bundle = read_bundle(source)
    private = load_private_key(key) if isinstance(key, (str, os.PathLike)) else key
    signature = sign_manifest(bundle.manifest_json, private)
    data = _zip([(MANIFEST_NAME, bundle.manifest_json), (MODEL_NAME, bundle.model),
                 (SIGNATURE_NAME, signature.to_json())])
    atomic_write_bytes(Path(out if out is not None else source), data)
    return Bundle(bundle.manifest, bundle.model, bundle.manifest_json, signature)


def read_bundle(source: str | os.PathLike[str] | bytes) -> Bundle:
    """Read and verify a bundle from a path or from bytes.

    Raises:
        BundleError: the file is missing, not a bundle, truncated, has unexpected members,
            a bad manifest, or a model whose SHA-256 differs from the manifest's.
    """
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "bundle"
    else:
        p = Path(source)
        where = str(p)
        if not p.is_file():
            raise BundleError(f"bundle {where} does not exist or is not a file")
        try:
            size = p.stat().st_size
            if size > MAX_BUNDLE_BYTES:
                raise BundleError(f"bundle {where} is {size} bytes; at most {MAX_BUNDLE_BYTES} "
                                  "expected")
            data = p.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read bundle {where}: {exc}") from exc
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise BundleError(
            f"{where} is not a readable bundle (truncated or not a zip: {exc}); "
            f"expected a zip holding {MANIFEST_NAME} and {MODEL_NAME}"
        ) from exc
    with zf:
        names = zf.namelist()
        if set(names) not in (_MEMBERS, _SIGNED_MEMBERS) or len(names) != len(set(names)):
            raise BundleError(
                f"{where} holds {sorted(names)}; expected exactly {sorted(_MEMBERS)} "
                f"(plus {SIGNATURE_NAME} when signed)"
            )
        for info in zf.infolist():
            # Stored members only: nothing in a bundle may expand beyond what is on disk.
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_BUNDLE_BYTES:
                raise BundleError(f"{where}: member {info.filename} is compressed or larger than "
                                  f"{MAX_BUNDLE_BYTES} bytes; expected stored (uncompressed) members")
        try:
            manifest_raw = zf.read(MANIFEST_NAME)
            model = zf.read(MODEL_NAME)
            signature_raw = zf.read(SIGNATURE_NAME) if SIGNATURE_NAME in names else None
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{where} is corrupt or truncated: {exc}") from exc
    manifest = Manifest.from_json(manifest_raw)
    digest = sha256_hex(model)
    if digest != manifest.model_sha256 or len(model) != manifest.model_bytes:
        raise BundleError(
            f"{where}: model.tflite does not match its manifest (SHA-256 {digest[:12]}..., "
            f"{len(model)} bytes; manifest says {manifest.model_sha256[:12]}..., "
            f"{manifest.model_bytes} bytes): the bundle was tampered with or damaged"
        )
    signature = Signature.from_json(signature_raw) if signature_raw is not None else None
    return Bundle(manifest=manifest, model=model, manifest_json=manifest_raw, signature=signature)

