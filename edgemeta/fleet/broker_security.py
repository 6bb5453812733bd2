"""Security settings for a local mosquitto: TLS listener, password file, ACL file.

:class:`MosquittoSecurity` becomes extra lines of the config :func:`edgemeta.fleet.start_broker`
writes; :func:`write_password_file` makes a mosquitto 2.x password file without running
``mosquitto_passwd`` (whose ``-b`` mode would put each password on a command line, visible in
process lists). ``deploy/mosquitto/`` has a production example of all three.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgemeta.errors import FleetError

__all__ = ["MosquittoSecurity", "hash_password", "write_password_file"]

# mosquitto 2.x "$7$" entries: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte digest, iteration count
# stored in the entry (mosquitto_passwd uses 101; more costs the broker time on every CONNECT).
_PBKDF2_ITERATIONS = 1000
_SALT_BYTES = 12


def hash_password(password: str, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """One mosquitto 2.x password hash, ``$7$<iterations>$<salt b64>$<digest b64>``.

    Args:
        password: The clear-text password (non-empty).
        iterations: PBKDF2 rounds, >= 1.

    Raises:
        FleetError: Empty password or a bad iteration count.
    """
    if not isinstance(password, str) or not password:
        raise FleetError("password must be a non-empty string")
    if not isinstance(iterations, int) or iterations < 1:
        raise FleetError(f"iterations must be an integer >= 1, got {iterations!r}")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def write_password_file(path: str | os.PathLike[str], users: Mapping[str, str]) -> Path:
    """Write a mosquitto password file (mode 0600) for ``users`` (user name -> password).

    Raises:
        FleetError: No users, or a user name that is empty or contains ``:``, whitespace or a
            control character (mosquitto's file format cannot hold it).
    """
    if not users:
        raise FleetError("users is empty: expected at least one user name -> password")
    lines = []
    for name, password in users.items():
        if (not isinstance(name, str) or not name or ":" in name
                or any(c.isspace() or ord(c) < 32 for c in name)):
            raise FleetError(f"invalid MQTT user name {name!r}: expected a non-empty name "
                             "without ':', whitespace or control characters")
        lines.append(f"{name}:{hash_password(password)}")
    out = Path(path)
    # Create with 0600 from the start: the hashes are brute-forceable, so no window of 0644.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return out


def _conf_path(value: str | os.PathLike[str], what: str) -> str:
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FleetError(f"{what} {str(value)!r} does not exist or is not a file: expected a "
                         f"readable {what}")
    if any(c.isspace() for c in str(path)):
        # mosquitto's config format has no quoting: a space would cut the path in two.
        raise FleetError(f"{what} path {str(path)!r} contains whitespace: expected a path "
                         "without spaces (mosquitto's config format cannot quote it)")
    return str(path)


@dataclass(frozen=True)
class MosquittoSecurity:
    """TLS and authentication for :func:`edgemeta.fleet.start_broker` (mosquitto only).

    Attributes:
        certfile: Server certificate (PEM). With ``keyfile`` it turns the listener into TLS;
            clients then use ``mqtts://`` and must trust its CA.
        keyfile: Server private key (PEM, unencrypted).
        cafile: CA that signed client certificates; set together with ``require_certificate``.
        require_certificate: Clients must present a certificate signed by ``cafile``.
        password_file: mosquitto password file (see :func:`write_password_file`).
        acl_file: mosquitto ACL file (``deploy/mosquitto/acl`` is the edgemeta example).
        allow_anonymous: Accept clients without a user name. False by default: a broker given
            security settings is meant to check who connects.
    """

    certfile: str | os.PathLike[str] | None = None
    keyfile: str | os.PathLike[str] | None = None
    cafile: str | os.PathLike[str] | None = None
    require_certificate: bool = False
    password_file: str | os.PathLike[str] | None = None
    acl_file: str | os.PathLike[str] | None = None
    allow_anonymous: bool = False

    @property
    def tls(self) -> bool:
        """True when the listener speaks TLS."""
        return self.certfile is not None

    def config_lines(self) -> list[str]:
        """mosquitto.conf lines for the listener that precedes them (plus the global auth).

        Raises:
            FleetError: certfile without keyfile (or the reverse), require_certificate without
                cafile, or a file that is missing or has whitespace in its path.
        """
        if (self.certfile is None) != (self.keyfile is None):
            raise FleetError("certfile and keyfile go together: expected both (TLS) or neither")
        if self.require_certificate and self.cafile is None:
            raise FleetError("require_certificate needs cafile: expected the CA that signed the "
                             "client certificates")
        if self.cafile is not None and not self.tls:
            raise FleetError("cafile is set but certfile/keyfile are not: expected a TLS "
                             "listener for client certificates")
        lines = []
        if self.tls:
            assert self.certfile is not None and self.keyfile is not None
            lines += [f"certfile {_conf_path(self.certfile, 'server certificate file')}",
                      f"keyfile {_conf_path(self.keyfile, 'server key file')}",
                      "tls_version tlsv1.2"]  # mosquitto 2.x: the minimum accepted version
            if self.cafile is not None:
                lines.append(f"cafile {_conf_path(self.cafile, 'client CA file')}")
            lines.append(f"require_certificate {'true' if self.require_certificate else 'false'}")
        lines.append(f"allow_anonymous {'true' if self.allow_anonymous else 'false'}")
        if self.password_file is not None:
            lines.append(f"password_file {_conf_path(self.password_file, 'password file')}")
        if self.acl_file is not None:
            lines.append(f"acl_file {_conf_path(self.acl_file, 'ACL file')}")
        return lines
