"""The checks a board makes before it accepts a bundle; each raises :class:`InstallError`.

They run in the order of :func:`firmware_bridge.install.install_bundle`: cheapest and most
telling first (signature, board, version, space), the health check last because it loads the
model.
"""

from __future__ import annotations

import errno
import logging
import shutil

from edgemeta.boards import check_bundle, get_board, require_flashable
from edgemeta.bundle import (
    BoardConfig,
    BoardHome,
    Bundle,
    compare_versions,
    trusted_keys,
    verify_manifest,
)
from edgemeta.errors import BoardError, InstallError, SignatureError

__all__ = ["SPACE_MARGIN_BYTES", "check_board", "check_downgrade", "check_space", "check_trust",
           "is_disk_full"]

log = logging.getLogger(__name__)

# Room kept free beyond the bundle itself: the re-learned prototypes, the pointer files, and
# the rest of the system on a card that also holds the OS.
SPACE_MARGIN_BYTES = 4 * 1024 * 1024


def check_trust(bundle: Bundle, home: BoardHome, config: BoardConfig) -> str:
    """Refuse a bundle this board does not trust; return a line saying why it is trusted.

    A signature by a trusted key must verify. A board configured with ``allow_unsigned`` also
    takes unsigned bundles and bundles signed by keys it does not know, but never a bundle whose
    signature by a key it *does* trust fails: that is evidence of tampering.
    """
    keys = trusted_keys(home)
    sig = bundle.signature
    if config.allow_unsigned and (sig is None or all(k.key_id != sig.key_id for k in keys)):
        return "unsigned bundles are allowed on this board"
    try:
        key = verify_manifest(bundle.manifest_json, sig, keys, where=f"bundle {bundle.version}")
    except SignatureError as exc:
        reason = "unsigned" if sig is None else "bad-signature"
        raise InstallError(f"{exc}; nothing was changed", reason) from exc
    return f"signed by trusted key {key.key_id}"


def check_board(bundle: Bundle, profile: str | None) -> None:
    """Refuse a bundle built for other boards, or one that does not fit this board's profile."""
    if profile is None:
        return
    m = bundle.manifest
    if m.boards and profile not in m.boards:
        raise InstallError(f"bundle {m.version} is built for {', '.join(m.boards)}, not for this "
                           f"board ({profile}); nothing was changed", "board-mismatch")
    try:
        board = get_board(profile)
        require_flashable(board)
        compat = check_bundle(m, board)
    except BoardError as exc:
        raise InstallError(f"{exc}; nothing was changed", "board-mismatch") from exc
    if not compat.fits:
        raise InstallError(f"bundle {m.version} {compat.summary()}; nothing was changed",
                           "board-mismatch")


def check_downgrade(bundle: Bundle, current: str | None, allow_downgrade: bool) -> None:
    """Refuse a version older than the current one unless ``allow_downgrade``."""
    if current is None or allow_downgrade:
        return
    if compare_versions(bundle.version, current) < 0:
        raise InstallError(f"bundle {bundle.version} is older than the current version {current}; "
                           "pass --allow-downgrade (allow_downgrade=True) to install it anyway, "
                           "or roll back; nothing was changed", "downgrade")


def check_space(home: BoardHome, needed: int, current: str | None) -> None:
    """Refuse early when the card cannot hold the new version next to the current one."""
    try:
        free = shutil.disk_usage(home.root).free
    except OSError as exc:
        log.warning("cannot read free space of %s: %s", home.root, exc)
        return
    if free < needed + SPACE_MARGIN_BYTES:
        kept = f"{current} stays current" if current else "nothing was installed"
        raise InstallError(f"the board's disk is full: installing needs {needed} bytes plus "
                           f"{SPACE_MARGIN_BYTES} spare, {free} are free at {home.root}; {kept}",
                           "disk-full")


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is a no-space or quota error."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
