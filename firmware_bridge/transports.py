"""How a bundle reaches a board: one :class:`Transport` per URL scheme.

Only ``dir:PATH`` (a board home on a local or mounted filesystem, e.g. an SD card) exists now.
SSH and MQTT transports slot in by implementing :class:`Transport` and adding a factory to
``_FACTORIES``; until then their schemes are recognised and refused with a clear message.
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

__all__ = ["DirTransport", "Transport", "flash", "supported_schemes", "transport_for"]

# A scheme needs at least two characters so that a Windows drive ("C:\\...") reads as a path.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.DOTALL)
_PLANNED = {"ssh": "ssh://USER@HOST/PATH", "mqtt": "mqtt://BROKER/BOARD_ID"}


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

    def push(self, bundle_path: str | os.PathLike[str]) -> InstallResult:
        """Send ``bundle_path`` to the board, install it there and make it current."""
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

    def push(self, bundle_path: str | os.PathLike[str]) -> InstallResult:
        """Install the bundle into the board home at :attr:`path`."""
        return install_bundle(bundle_path, self.home, keep=self.keep)


_FACTORIES: dict[str, Callable[[str], Transport]] = {"dir": DirTransport.from_url}


def supported_schemes() -> list[str]:
    """Target URL forms that :func:`transport_for` accepts now, e.g. ``["dir:PATH"]``."""
    return [f"{scheme}:PATH" if scheme == "dir" else f"{scheme}:..." for scheme in _FACTORIES]


def _supported_text() -> str:
    return ", ".join(supported_schemes()) + " (or a bare path)"


def transport_for(url: str | os.PathLike[str]) -> Transport:
    """The transport for a target URL.

    Args:
        url: ``dir:PATH``, a bare filesystem path, or (later) ``ssh://...`` / ``mqtt://...``.

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


def flash(bundle_path: str | os.PathLike[str], url: str | os.PathLike[str], *,
          board: str | None = None) -> InstallResult:
    """Verify a bundle, check it against ``board``, and install it on the board at ``url``.

    The checks run here, before anything is sent, so a bundle that cannot work never leaves the
    workstation; the board side verifies the bundle again after the transfer.

    Args:
        bundle_path: The ``.edgemeta`` file.
        url: Where the board is: ``dir:PATH`` or a bare path.
        board: A board profile name (e.g. ``"rpi-4b"``) to check compatibility against.

    Returns:
        The board's :class:`InstallResult`.

    Raises:
        FlashError: bad URL, bad bundle, the bundle does not fit ``board``, or the install failed
            (the board's previous model then stays current).
    """
    transport = transport_for(url)
    preflight(bundle_path, board)
    return transport.push(bundle_path)
