"""How a bundle reaches a board: one :class:`Transport` per URL scheme.

``dir:PATH`` is a board home on a local or mounted filesystem (e.g. an SD card);
``ssh://USER@HOST[:PORT]/PATH`` reaches a board with the user's OpenSSH client
(:mod:`firmware_bridge.ssh`); ``mqtt://BROKER[:PORT]/[FLEET/]DEVICE`` flashes over the air
through an MQTT broker (:mod:`firmware_bridge.ota`). Another transport slots in by implementing
:class:`Transport` and adding a factory to ``_FACTORIES``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from edgemeta.bundle import BoardHome
from edgemeta.errors import FlashError
from firmware_bridge.install import InstallResult, install_bundle, preflight
from firmware_bridge.ssh import SSHTransport

__all__ = ["DirTransport", "SSHTransport", "Transport", "flash", "supported_schemes",
           "transport_for"]

# A scheme needs at least two characters so that a Windows drive ("C:\\...") reads as a path.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.DOTALL)
_PLANNED: dict[str, str] = {}
_FORMS = {"dir": "dir:PATH", "ssh": "ssh://USER@HOST[:PORT]/PATH",
          "mqtt": "mqtt://BROKER[:PORT]/[FLEET/]DEVICE",
          "mqtts": "mqtts://BROKER[:PORT]/[FLEET/]DEVICE?ca=CA.pem"}


def _mqtt_transport(url: str) -> "Transport":
    # Imported here: firmware_bridge.ota imports this package's install module.
    from firmware_bridge.ota.transport import MqttTransport

    return MqttTransport.from_url(url)


@runtime_checkable
class Transport(Protocol):
    """Delivers a bundle to one board and installs it there.

    Implementations must leave the board's previous model current if anything fails, and verify
    the bundle on the board side (never trust the transfer).
    """

    @property
    def url(self) -> str:
        """The URL this transport was made from, for messages and logs."""
        ...

    def push(self, bundle_path: str | os.PathLike[str], *,
             allow_downgrade: bool = False) -> InstallResult:
        """Send ``bundle_path`` to the board, install it there and make it current.

        ``allow_downgrade`` lets an older version replace a newer one; the board refuses
        otherwise.
        """
        ...


@dataclass(frozen=True)
class DirTransport:
    """A board home reachable as a directory: the simulator, or a mounted SD card.

    Attributes:
        path: The board home (created on first push if its parent exists).
        keep: How many installed versions to keep on the board.
    """

    path: Path
    keep: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())

    @classmethod
    def from_url(cls, url: str) -> "DirTransport":
        """Build from ``dir:PATH`` (also ``dir:///abs/path``) or a bare path."""
        match = _SCHEME_RE.match(url)
        rest = match.group(2) if match and match.group(1).lower() == "dir" else url
        if rest.startswith("///"):  # URL style: dir:///mnt/sd is the absolute path /mnt/sd
            rest = rest[2:]
        if not rest.strip():
            raise FlashError(f"target {url!r} names no directory; expected dir:PATH, "
                             "e.g. dir:/media/pi/bootfs/edgemeta or dir:./sim-board")
        return cls(Path(rest))

    @property
    def url(self) -> str:
        return f"dir:{self.path}"

    @property
    def home(self) -> BoardHome:
        return BoardHome.at(self.path)

    def push(self, bundle_path: str | os.PathLike[str], *,
             allow_downgrade: bool = False) -> InstallResult:
        """Install the bundle into the board home at :attr:`path`."""
        return install_bundle(bundle_path, self.home, keep=self.keep,
                              allow_downgrade=allow_downgrade)


_FACTORIES: dict[str, Callable[[str], Transport]] = {"dir": DirTransport.from_url,
                                                      "ssh": SSHTransport.from_url,
                                                      "mqtt": _mqtt_transport,
                                                      "mqtts": _mqtt_transport}


def supported_schemes() -> list[str]:
    """Target URL forms that :func:`transport_for` accepts now, e.g. ``["dir:PATH"]``."""
    return [_FORMS.get(scheme, f"{scheme}:...") for scheme in _FACTORIES]


def _supported_text() -> str:
    return ", ".join(supported_schemes()) + " (or a bare path)"


def transport_for(url: str | os.PathLike[str]) -> Transport:
    """The transport for a target URL.

    Args:
        url: ``dir:PATH``, a bare filesystem path, or ``ssh://USER@HOST[:PORT]/PATH``.

    Raises:
        FlashError: the URL is empty, or its scheme is unknown or not supported yet (the message
            lists the supported forms).
    """
    if isinstance(url, os.PathLike):
        return DirTransport(Path(url))
    if not isinstance(url, str) or not url.strip():
        raise FlashError(f"target {url!r} is empty; expected one of {_supported_text()}")
    match = _SCHEME_RE.match(url)
    if match is None:
        return DirTransport.from_url(url)
    scheme = match.group(1).lower()
    if scheme in _FACTORIES:
        return _FACTORIES[scheme](url)
    if scheme in _PLANNED:
        raise FlashError(f"target {url!r}: the {scheme} transport ({_PLANNED[scheme]}) is not "
                         f"supported yet; supported now: {_supported_text()}")
    raise FlashError(f"target {url!r}: unknown scheme {scheme!r}; supported: {_supported_text()}"
                     f" (a path containing ':' can be written as dir:PATH)")


def flash(bundle_path: str | os.PathLike[str], url: str | os.PathLike[str] | Transport, *,
          board: str | None = None, allow_downgrade: bool = False) -> InstallResult:
    """Verify a bundle, check it against ``board``, and install it on the board at ``url``.

    The checks run here, before anything is sent, so a bundle that cannot work never leaves the
    workstation; the board side verifies the bundle again after the transfer.

    Args:
        bundle_path: The ``.edgemeta`` file.
        url: Where the board is: ``dir:PATH``, a bare path, ``ssh://USER@HOST[:PORT]/PATH``,
            or a ready-made :class:`Transport` (e.g. an :class:`SSHTransport` with options).
        board: A board profile name (e.g. ``"rpi-4b"``) to check compatibility against.
        allow_downgrade: Let a bundle older than the board's current one replace it.

    Returns:
        The board's :class:`InstallResult`.

    Raises:
        FlashError: bad URL, bad bundle, the bundle does not fit ``board``, or the install failed
            (the board's previous model then stays current).
    """
    transport = url if isinstance(url, Transport) else transport_for(url)
    preflight(bundle_path, board)
    return transport.push(bundle_path, allow_downgrade=allow_downgrade)
