"""What a board home trusts: its signing keys, its board profile, and whether unsigned is allowed.

::

    HOME/
      board.json            {"schema": 1, "board": "rpi-4b", "allow_unsigned": false}
      trust/<key_id>.pub    PEM public keys whose signatures this board accepts

The policy lives on the board, not in the flashing command: a remote sender must never be able to
switch signature checks off. A home with no ``board.json`` gets the safe defaults (signatures
required, any board profile).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.home import BoardHome
from edgemeta.bundle.signing import PublicKey, load_public_key
from edgemeta.errors import BundleError, SignatureError

__all__ = ["BoardConfig", "CONFIG_NAME", "TRUST_DIR", "init_home", "read_config", "trusted_keys"]

log = logging.getLogger(__name__)

CONFIG_NAME = "board.json"
TRUST_DIR = "trust"
_CONFIG_SCHEMA = 1


@dataclass(frozen=True)
class BoardConfig:
    """A board home's own settings.

    Attributes:
        board: The board profile this home runs on (e.g. ``"rpi-4b"``); bundles are checked
            against it before install. None: not checked.
        allow_unsigned: Install bundles without a signature. Off by default; a bundle signed by
            a key the board trusts must still verify.
        allow_ota_downgrade: Honour a downgrade requested in an over-the-air offer. Off by
            default: anyone who can publish to the board's topics could otherwise replay an old,
            correctly signed bundle with known flaws. Downgrades by ``dir:`` or ``ssh://`` (which
            need access to the board itself) are not affected.
    """

    board: str | None = None
    allow_unsigned: bool = False
    allow_ota_downgrade: bool = False

    def to_json(self) -> bytes:
        return (json.dumps({"schema": _CONFIG_SCHEMA, **asdict(self)}, indent=2, sort_keys=True)
                + "\n").encode()


def _home(home: BoardHome | str | os.PathLike[str]) -> BoardHome:
    return home if isinstance(home, BoardHome) else BoardHome.at(home)


def read_config(home: BoardHome | str | os.PathLike[str]) -> BoardConfig:
    """The home's :class:`BoardConfig` (defaults if it has none).

    Raises:
        BundleError: ``board.json`` exists but is damaged. Fail closed: a board that cannot read
            its policy must not fall back to something more permissive.
    """
    path = _home(home).root / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return BoardConfig()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); rewrite it with: edgemeta board "
                          "init") from exc
    if not isinstance(data, dict) or data.get("schema") != _CONFIG_SCHEMA:
        raise BundleError(f"{path}: expected a JSON object with \"schema\": {_CONFIG_SCHEMA}")
    board, allow = data.get("board"), data.get("allow_unsigned", False)
    ota_down = data.get("allow_ota_downgrade", False)
    unknown = sorted(set(data) - {"schema", "board", "allow_unsigned", "allow_ota_downgrade"})
    if (unknown or not (board is None or isinstance(board, str)) or not isinstance(allow, bool)
            or not isinstance(ota_down, bool)):
        raise BundleError(f"{path}: expected only board (a profile name or null), allow_unsigned "
                          "and allow_ota_downgrade (true/false)"
                          f"{'; unknown: ' + str(unknown) if unknown else ''}")
    return BoardConfig(board=board, allow_unsigned=allow, allow_ota_downgrade=ota_down)


def trusted_keys(home: BoardHome | str | os.PathLike[str]) -> list[PublicKey]:
    """The public keys in ``HOME/trust/`` (a damaged key file is skipped with a warning)."""
    trust = _home(home).root / TRUST_DIR
    if not trust.is_dir():
        return []
    keys = []
    for path in sorted(trust.glob("*.pub")):
        try:
            keys.append(load_public_key(path))
        except SignatureError as exc:
            log.warning("ignoring %s: %s", path, exc)
    return keys


def init_home(home: BoardHome | str | os.PathLike[str], *,
              trust: Iterable[str | os.PathLike[str]] = (), allow_unsigned: bool | None = None,
              board: str | None = None, allow_ota_downgrade: bool | None = None) -> BoardConfig:
    """Create or update a board home's trust settings.

    Only what is given changes: keys are added to those already trusted, and ``allow_unsigned``
    or ``board`` are kept as they were when None.

    Args:
        home: The board home (created if only it is missing).
        trust: Public key files (``.pub`` from ``edgemeta keys generate``) to trust.
        allow_unsigned: Set whether unsigned bundles are accepted.
        board: Set the board profile name the home runs on.
        allow_ota_downgrade: Set whether over-the-air offers may downgrade the model.

    Returns:
        The config now in force.

    Raises:
        BundleError: the home's parent does not exist, or a key or the current config is bad.
    """
    h = _home(home)
    if not h.root.is_dir() and not h.root.parent.is_dir():
        raise BundleError(f"board home {h.root} does not exist and neither does its parent; "
                          "create it or check the path")
    # Everything is checked before anything is written: a bad key or profile creates nothing.
    keys = [load_public_key(p) for p in trust]
    if board is not None:
        from edgemeta.boards import get_board  # validates the name; imported late (boards reads files)

        get_board(board)
    config = read_config(h) if h.root.is_dir() else BoardConfig()
    if allow_unsigned is not None:
        config = replace(config, allow_unsigned=bool(allow_unsigned))
    if allow_ota_downgrade is not None:
        config = replace(config, allow_ota_downgrade=bool(allow_ota_downgrade))
    if board is not None:
        config = replace(config, board=board)
    h.root.mkdir(exist_ok=True)
    for key in keys:
        atomic_write_bytes(h.root / TRUST_DIR / f"{key.key_id}.pub", Path(key.source).read_bytes())
    atomic_write_bytes(h.root / CONFIG_NAME, config.to_json())
    return config
