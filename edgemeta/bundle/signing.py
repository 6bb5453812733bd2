"""Ed25519 signatures over bundles: key pairs, signing, verification.

What is signed is the exact byte string of ``manifest.json``. The manifest carries the model's
SHA-256 and size, and :func:`~edgemeta.bundle.read_bundle` checks those against ``model.tflite``,
so one signature covers the model and everything the board does with it (preprocessing,
distance, version, self-test). The signature lives in a third zip member, ``signature.json``::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte public key: short enough
to read in a log, and only a hint for choosing the key (the signature is what is checked).

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), readable by OpenSSL and any
other tool. The ``cryptography`` package does the cryptography; nothing here is hand-rolled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from edgemeta._deps import require
from edgemeta.bundle._fs import atomic_create_bytes
from edgemeta.errors import SignatureError

__all__ = [
    "SIGNATURE_NAME",
    "KeyPair",
    "PublicKey",
    "Signature",
    "generate_keypair",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_manifest",
]

SIGNATURE_NAME = "signature.json"
ALGORITHM = "ed25519"
_MAX_KEY_FILE = 16 * 1024


def _ed25519() -> Any:
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "signing and verifying bundles")


def _serialization() -> Any:
    return require("cryptography.hazmat.primitives.serialization", "reading signing keys")


@dataclass(frozen=True)
class Signature:
    """The parsed ``signature.json`` member."""

    key_id: str
    signature: bytes
    algorithm: str = ALGORITHM

    def to_json(self) -> bytes:
        return json.dumps({"algorithm": self.algorithm, "key_id": self.key_id,
                           "signature": base64.b64encode(self.signature).decode()},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Signature":
        """Parse ``signature.json``; raise :class:`SignatureError` naming what is malformed."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SignatureError(f"{SIGNATURE_NAME} is not valid JSON ({exc}); expected "
                                 '{"algorithm": "ed25519", "key_id": ..., "signature": ...}') from exc
        if not isinstance(data, dict) or set(data) != {"algorithm", "key_id", "signature"}:
            raise SignatureError(f"{SIGNATURE_NAME} must hold exactly the fields algorithm, key_id "
                                 "and signature")
        if data["algorithm"] != ALGORITHM:
            raise SignatureError(f"{SIGNATURE_NAME}: algorithm {data['algorithm']!r} is not "
                                 f"supported; expected {ALGORITHM!r}")
        key_id, sig = data["key_id"], data["signature"]
        if not isinstance(key_id, str) or len(key_id) != 16 or not all(c in "0123456789abcdef"
                                                                      for c in key_id):
            raise SignatureError(f"{SIGNATURE_NAME}: key_id {key_id!r} is not 16 lowercase hex digits")
        try:
            raw_sig = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
            raw_sig = b""
        if len(raw_sig) != 64:
            raise SignatureError(f"{SIGNATURE_NAME}: signature is not 64 bytes of base64; "
                                 "the bundle's signature is damaged")
        return cls(key_id=key_id, signature=raw_sig)


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key and where it came from (for messages)."""

    key_id: str
    raw: bytes
    source: str = ""

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        key = _ed25519().Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            key.verify(signature, message)
        except require("cryptography.exceptions", "verifying bundles").InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class KeyPair:
    """Paths of a generated key pair and its id."""

    key_id: str
    private_path: Path
    public_path: Path


def key_id_of(raw_public: bytes) -> str:
    """The 16-hex-digit id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _raw_public(public_key: Any) -> bytes:
    ser = _serialization()
    return public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise SignatureError(f"{what} {path} is larger than {_MAX_KEY_FILE} bytes; expected a "
                                 "PEM key file")
        return path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{what} {path} does not exist; make one with: edgemeta keys "
                             "generate") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {what} {path}: {exc}") from exc


def generate_keypair(private_path: str | os.PathLike[str],
                     public_path: str | os.PathLike[str] | None = None) -> KeyPair:
    """Make a new Ed25519 key pair and write it as PEM files.

    The private key is written with mode 0600 and is never overwritten: losing a signing key
    locks a fleet out of updates, so an existing file is an error.

    Args:
        private_path: Where the private key goes (e.g. ``release.key``).
        public_path: Where the public key goes; default: ``private_path`` with ``.pub`` appended.

    Raises:
        SignatureError: either file already exists or cannot be written.
    """
    priv_p = Path(private_path)
    pub_p = Path(public_path) if public_path is not None else priv_p.with_name(priv_p.name + ".pub")
    for p in (priv_p, pub_p):
        if p.exists():
            raise SignatureError(f"{p} already exists; refusing to overwrite a key (move it away "
                                 "or choose another path)")
    ser = _serialization()
    key = _ed25519().Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub_pem = key.public_key().public_bytes(ser.Encoding.PEM,
                                           ser.PublicFormat.SubjectPublicKeyInfo)
    if priv_p.resolve() == pub_p.resolve():
        raise SignatureError(f"the private and the public key would both be {priv_p}; expected "
                             "two different paths")
    written: list[Path] = []
    target = priv_p
    try:
        # Created, never replaced: a key that appears meanwhile is not overwritten either.
        for target, pem, mode in ((priv_p, priv_pem, 0o600), (pub_p, pub_pem, None)):
            atomic_create_bytes(target, pem, mode=mode)
            written.append(target)
    except OSError as exc:
        for done in written:  # no half pair: a private key without its public one is useless
            done.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise SignatureError(f"{target} already exists; refusing to overwrite a key (move "
                                 "it away or choose another path)") from exc
        raise SignatureError(f"cannot write the key pair to {target}: {exc}") from exc
    return KeyPair(key_id_of(_raw_public(key.public_key())), priv_p, pub_p)


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """Read a PEM Ed25519 private key; raise :class:`SignatureError` if it is not one."""
    p = Path(path)
    data = _read_key_file(p, "private key")
    try:
        key = _serialization().load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{p} is not an unencrypted PEM private key ({exc}); expected a key "
                             "made by: edgemeta keys generate") from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise SignatureError(f"{p} holds a {type(key).__name__}; expected an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a PEM Ed25519 public key; raise :class:`SignatureError` if it is not one."""
    p = Path(path)
    data = _read_key_file(p, "public key")
    try:
        key = _serialization().load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{p} is not a PEM public key ({exc}); expected the .pub file made "
                             "by: edgemeta keys generate") from exc
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise SignatureError(f"{p} holds a {type(key).__name__}; expected an Ed25519 public key")
    raw = _raw_public(key)
    return PublicKey(key_id_of(raw), raw, str(p))


def sign_manifest(manifest_json: bytes, private_key: Any) -> Signature:
    """Sign the exact bytes of ``manifest.json`` with a loaded private key."""
    raw_pub = _raw_public(private_key.public_key())
    return Signature(key_id=key_id_of(raw_pub), signature=private_key.sign(manifest_json))


def verify_manifest(manifest_json: bytes, signature: Signature | None,
                    trusted: Iterable[PublicKey], where: str = "bundle") -> PublicKey:
    """Check ``signature`` over ``manifest_json`` against the trusted keys; return the key used.

    Raises:
        SignatureError: unsigned, signed by a key not trusted here, or the signature does not
            verify (the bundle was altered after signing).
    """
    keys = list(trusted)
    if signature is None:
        raise SignatureError(f"{where} is not signed; this board only installs bundles signed by "
                             f"a key it trusts ({_key_list(keys)}); sign it with: edgemeta bundle "
                             "sign BUNDLE --key KEY")
    matching = [k for k in keys if k.key_id == signature.key_id]
    if not matching:
        raise SignatureError(f"{where} is signed by key {signature.key_id}, which this board does "
                             f"not trust (trusted: {_key_list(keys)}); add its .pub with: "
                             "edgemeta board init HOME --trust KEY.pub")
    for key in matching:
        if key.verify(signature.signature, manifest_json):
            return key
    raise SignatureError(f"{where}: the signature by key {signature.key_id} does not match the "
                         "manifest: the bundle was altered after it was signed")


def _key_list(keys: list[PublicKey]) -> str:
    return ", ".join(k.key_id for k in keys) if keys else "none"
