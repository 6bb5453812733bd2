"""Reading and writing ``NAME.edgemeta`` files: a zip holding ``manifest.json`` and ``model.tflite``.

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

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.manifest import Manifest
from edgemeta.errors import BundleError

__all__ = ["Bundle", "BUNDLE_SUFFIX", "MANIFEST_NAME", "MODEL_NAME", "MAX_BUNDLE_BYTES",
           "pack_bundle", "read_bundle", "bundle_bytes", "sha256_hex"]

BUNDLE_SUFFIX = ".edgemeta"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
# A board should never be asked to unpack something huge by accident (or on purpose).
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
_MEMBERS = {MANIFEST_NAME, MODEL_NAME}
# Fixed timestamp so that packing the same model twice gives identical bytes.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle in memory."""

    manifest: Manifest
    model: bytes

    @property
    def version(self) -> str:
        return self.manifest.version


def bundle_bytes(manifest: Manifest, model: bytes) -> bytes:
    """Serialise a bundle to bytes after checking the manifest describes ``model``."""
    if manifest.model_sha256 != sha256_hex(model) or manifest.model_bytes != len(model):
        raise BundleError("manifest model_sha256/model_bytes do not describe the model being packed")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in ((MANIFEST_NAME, manifest.to_json().encode()), (MODEL_NAME, model)):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def pack_bundle(manifest: Manifest, model: bytes, path: str | os.PathLike[str]) -> Path:
    """Write a bundle file atomically (temporary file, fsync, rename) and return its path."""
    out = Path(path)
    atomic_write_bytes(out, bundle_bytes(manifest, model))
    return out


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
        size = p.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle {where} is {size} bytes; at most {MAX_BUNDLE_BYTES} expected")
        data = p.read_bytes()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(
            f"{where} is not a readable bundle (truncated or not a zip: {exc}); "
            f"expected a zip holding {MANIFEST_NAME} and {MODEL_NAME}"
        ) from exc
    with zf:
        names = zf.namelist()
        if set(names) != _MEMBERS or len(names) != len(_MEMBERS):
            raise BundleError(
                f"{where} holds {sorted(names)}; expected exactly {sorted(_MEMBERS)}"
            )
        for info in zf.infolist():
            # Stored members only: nothing in a bundle may expand beyond what is on disk.
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_BUNDLE_BYTES:
                raise BundleError(f"{where}: member {info.filename} is compressed or larger than "
                                  f"{MAX_BUNDLE_BYTES} bytes; expected stored (uncompressed) members")
        try:
            manifest_raw = zf.read(MANIFEST_NAME)
            model = zf.read(MODEL_NAME)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise BundleError(f"{where} is corrupt or truncated: {exc}") from exc
    manifest = Manifest.from_json(manifest_raw)
    digest = sha256_hex(model)
    if digest != manifest.model_sha256 or len(model) != manifest.model_bytes:
        raise BundleError(
            f"{where}: model.tflite does not match its manifest (SHA-256 {digest[:12]}..., "
            f"{len(model)} bytes; manifest says {manifest.model_sha256[:12]}..., "
            f"{manifest.model_bytes} bytes): the bundle was tampered with or damaged"
        )
    return Bundle(manifest=manifest, model=model)

