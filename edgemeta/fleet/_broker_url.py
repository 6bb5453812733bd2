"""Broker URLs: ``mqtt://`` or ``mqtts://``, with TLS files and a user name, parsed and checked.

Every component that talks to a broker (reporter, monitor, OTA sender and board, agent, CLI)
takes one URL string, so security settings live in the URL instead of in extra parameters::

    mqtt://HOST[:1883]                  (mqtt://USER@HOST only when HOST is this machine)
    mqtts://[USER@]HOST[:8883][?ca=CA.pem][&cert=CLIENT.pem[&key=CLIENT.key]][&password_file=F]

The password is never part of the URL: it comes from ``?password_file=PATH`` (first line) or the
environment variable ``EDGEMETA_MQTT_PASSWORD``. A URL ends up in process lists (``--broker``),
shell history, logs and error messages; a password in it would leak through all of them. Nor
does a password go over plain ``mqtt://`` (readable by anyone on the network), except to a
loopback address (``localhost``, ``127.0.0.0/8``, ``::1``), where it never leaves the machine.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from edgemeta.errors import FleetError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "PASSWORD_ENV",
    "BrokerAddress",
    "is_loopback",
    "parse_broker_url",
    "redact_url",
]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
PASSWORD_ENV = "EDGEMETA_MQTT_PASSWORD"
QUERY_KEYS = ("ca", "cert", "key", "password_file")
_MAX_PASSWORD_FILE_BYTES = 4096  # a password file is one short line; anything bigger is a mistake
_FORMS = "mqtt://host[:port] or mqtts://[user@]host[:port][?ca=CA.pem&cert=C.pem&key=K.pem]"


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to connect: the parsed form of a broker URL.

    Attributes:
        host: Host name or IP address; with TLS it must match the server certificate.
        port: TCP port (1883 for ``mqtt://``, 8883 for ``mqtts://`` unless given).
        tls: True for ``mqtts://``.
        ca: PEM file with the CA certificate(s) that signed the broker's certificate; None means
            the system trust store.
        cert: PEM client certificate (may contain the key too), for brokers that require one.
        key: PEM private key of ``cert`` when it is a separate file; must not be encrypted.
        username: MQTT user name, or None for an anonymous connection.
        password: MQTT password (from ``password_file`` or the environment); never printed.
    """

    host: str
    port: int
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def hostport(self) -> tuple[str, int]:
        """``(host, port)``, what the plain-MQTT code used to get from ``parse_broker_url``."""
        return self.host, self.port


def redact_url(url: str) -> str:
    """``url`` with a ``user:password@`` password and any ``password=`` value replaced by ``***``.

    Used for every error message that repeats a URL, so a misplaced password is not printed.
    """
    out = re.sub(r"(//[^/@:?#]*):[^/@?#]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", out)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: traffic that never leaves the machine."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _bad(url: str, what: str) -> FleetError:
    return FleetError(f"broker URL {redact_url(url)!r} {what}: expected {_FORMS}")


def _readable_file(url: str, key: str, value: str, expected: str) -> str:
    """Check that a ``?key=PATH`` file exists and can be read; returns the path unchanged."""
    if not value:
        raise _bad(url, f"has an empty {key}=")
    path = Path(value).expanduser()
    if not path.is_file():
        raise FleetError(f"{key} file {value!r} from broker URL {redact_url(url)!r} does not exist "
                         f"or is not a file: expected {expected}")
    if not os.access(path, os.R_OK):
        raise FleetError(f"{key} file {value!r} from broker URL {redact_url(url)!r} is not "
                         f"readable by this user: expected {expected}")
    return str(path)


def _query(url: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise _bad(url, "has a malformed query") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key == "password":
            raise _bad(url, "carries a password (visible in process lists and logs); put it in "
                            f"the environment variable {PASSWORD_ENV} or in a file named by "
                            "?password_file=PATH instead")
        if key not in QUERY_KEYS:
            raise _bad(url, f"has an unknown query parameter {key!r} (known: "
                            f"{', '.join(QUERY_KEYS)}; there is deliberately no way to turn off "
                            "certificate checks)")
        if key in out:
            raise _bad(url, f"gives {key}= twice")
        out[key] = value
    return out


def _password(url: str, username: str | None, password_file: str | None) -> str | None:
    """The password: ``password_file`` wins over the environment; None when neither is set."""
    if password_file is not None:
        if username is None:
            raise _bad(url, "has password_file= but no user name (mqtts://USER@HOST)")
        path = _readable_file(url, "password_file", password_file,
                              "a file whose first line is the MQTT password")
        data = Path(path).read_bytes()[: _MAX_PASSWORD_FILE_BYTES + 1]
        if len(data) > _MAX_PASSWORD_FILE_BYTES:
            raise FleetError(f"password_file {password_file!r} is larger than "
                             f"{_MAX_PASSWORD_FILE_BYTES} bytes: expected one line with the "
                             "password")
        lines = data.decode("utf-8", errors="strict").splitlines()
        if not lines or not lines[0]:
            raise FleetError(f"password_file {password_file!r} is empty: expected the MQTT "
                             f"password of user {username!r} on its first line")
        return lines[0]
    if username is None:
        return None  # an anonymous client sends no password even if the variable is set
    return os.environ.get(PASSWORD_ENV) or None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse and check a broker URL; the files it names must exist now.

    Args:
        url: ``mqtt://HOST[:PORT]`` for plain MQTT, or ``mqtts://`` for TLS with optional
            ``?ca=PATH`` (else the system CAs), ``&cert=PATH[&key=PATH]`` (client certificate) and
            ``USER@`` with the password in ``?password_file=PATH`` or ``EDGEMETA_MQTT_PASSWORD``.

    Returns:
        The parsed :class:`BrokerAddress`.

    Raises:
        FleetError: Another scheme, no host, a bad port, a path, an unknown or repeated query
            parameter, a password written into the URL, TLS files given for ``mqtt://``, a ``key``
            without ``cert``, a named file that does not exist or cannot be read, or a password
            that would go unencrypted over ``mqtt://`` to a host other than this machine.
    """
    if not isinstance(url, str):
        raise FleetError(f"broker URL must be a string like mqtt://127.0.0.1:1883, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FleetError(f"bad broker URL {redact_url(url)!r} ({exc}): expected {_FORMS}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        # ws:// would need websocket setup this SDK does not do; say so plainly.
        raise FleetError(f"unsupported broker URL {redact_url(url)!r}: expected {_FORMS}")
    if parts.password is not None:
        raise _bad(url, "has a password in it (visible in process lists and logs); put it in the "
                        f"environment variable {PASSWORD_ENV} or in a file named by "
                        "?password_file=PATH instead")
    if not parts.hostname:
        raise _bad(url, "has no host")
    if port == 0:
        # urlsplit accepts it; paho would fail later with a bare "Invalid port number".
        raise _bad(url, "has port 0: expected a TCP port from 1 to 65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise _bad(url, "has a path or fragment")
    tls = parts.scheme == "mqtts"
    query = _query(url, parts.query)
    if not tls and any(k in query for k in ("ca", "cert", "key")):
        raise _bad(url, "gives TLS files (ca/cert/key) for plain mqtt://; use mqtts:// for TLS")
    if "key" in query and "cert" not in query:
        raise _bad(url, "gives key= without cert=")
    username = unquote(parts.username) if parts.username is not None else None
    if username is not None and (not username or ":" in username
                                 or any(ord(c) < 32 for c in username)):
        raise _bad(url, f"has an invalid user name {username!r}")
    password = _password(url, username, query.get("password_file"))
    if password is not None and not tls and not is_loopback(parts.hostname):
        raise FleetError(
            f"broker URL {redact_url(url)!r} would send the password of user {username!r} "
            f"unencrypted over plain mqtt:// to {parts.hostname!r}: expected "
            f"mqtts://{username}@{parts.hostname}[:8883]?ca=CA.pem (TLS; see deploy/mosquitto) "
            "or a loopback host (127.0.0.1, localhost)")
    ca = cert = key = None
    if "ca" in query:
        ca = _readable_file(url, "ca", query["ca"], "a PEM file with the CA certificate that "
                            "signed the broker's certificate")
    if "cert" in query:
        cert = _readable_file(url, "cert", query["cert"], "a PEM client certificate")
    if "key" in query:
        key = _readable_file(url, "key", query["key"], "the PEM private key of cert=")
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        tls=tls, ca=ca, cert=cert, key=key, username=username, password=password,
    )
