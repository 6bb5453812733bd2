"""Installing a bundle into a board home, atomically, with one-step rollback.

The invariant: whatever fails (a bad bundle, a full card, a crash), ``current`` keeps naming a
complete, verified model, and no half-written file is left behind.

The home's lock, its ``previous`` record, sweeping and pruning live in
:mod:`firmware_bridge._home`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from edgemeta.boards import check_bundle, get_board, require_flashable
from edgemeta.bundle import (
    MAX_BUNDLE_BYTES,
    BoardHome,
    Bundle,
    Manifest,
    atomic_write_bytes,
    read_bundle,
    read_config,
    sha256_hex,
)
from edgemeta.errors import BoardError, BundleError, FlashError, InstallError
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.health import HealthReport, health_check
from firmware_bridge.checks import check_board, check_downgrade, check_space, check_trust, is_disk_full
from firmware_bridge._home import (
    PREVIOUS_POINTER,
    current_version,
    locked,
    prepare_home,
    prune,
    read_previous,
    remove_if_empty,
    restore_previous,
    sweep_partials,
    write_previous,
)
from firmware_bridge.migrate import Migration, migrate_state

__all__ = ["InstallResult", "PREVIOUS_POINTER", "install_bundle", "installed", "preflight",
           "rollback"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class InstallResult:
    """What an install did.

    Attributes:
        version: The version now current.
        previous_version: The version :func:`rollback` would return to (None if there is none).
        path: The installed bundle inside the home.
        changed: False if the same bundle was already installed and current (nothing was done).
        pruned: Old versions removed to respect ``keep``.
        trust: Why the board accepted the bundle (e.g. "signed by trusted key 3f2a...").
        health: The health check's report (None if it was skipped).
        migration: Which enrolled classes were re-learned with the new model.
    """

    version: str
    previous_version: str | None
    path: Path
    changed: bool
    pruned: tuple[str, ...] = ()
    trust: str = ""
    health: HealthReport | None = None
    migration: Migration = Migration()


def _as_home(home: BoardHome | str | os.PathLike[str]) -> BoardHome:
    return home if isinstance(home, BoardHome) else BoardHome.at(home)


def _read_source(bundle_path: str | os.PathLike[str]) -> bytes:
    src = Path(bundle_path)
    try:
        size = src.stat().st_size
        if not src.is_file():
            raise FlashError(f"cannot install {src}: it is not a file; expected a .edgemeta bundle")
        if size > MAX_BUNDLE_BYTES:
            raise FlashError(f"cannot install {src}: it is {size} bytes; at most "
                             f"{MAX_BUNDLE_BYTES} expected for a bundle")
        return src.read_bytes()
    except FileNotFoundError:
        raise FlashError(f"cannot install {src}: no such file; expected a .edgemeta bundle") from None
    except OSError as exc:
        raise FlashError(f"cannot install {src}: cannot read it ({exc})") from exc


def preflight(bundle_path: str | os.PathLike[str], board: str | None = None) -> Bundle:
    """Read and verify a bundle and, if ``board`` is given, check that it fits that board.

    Args:
        bundle_path: A ``.edgemeta`` file.
        board: A board profile name (e.g. ``"rpi-4b"``), or None to skip the board check.

    Returns:
        The verified bundle.

    Raises:
        FlashError: the bundle is missing, damaged or tampered with, the board is unknown, or the
            bundle does not fit the board. The message keeps the underlying cause's message.
    """
    bundle, _ = _load(bundle_path, board)
    return bundle


def _load(bundle_path: str | os.PathLike[str], board: str | None) -> tuple[Bundle, bytes]:
    data = _read_source(bundle_path)
    try:
        bundle = read_bundle(data)
    except BundleError as exc:
        raise FlashError(f"cannot install {bundle_path}: {exc}; nothing was changed") from exc
    if board is not None:
        try:
            profile = get_board(board)
            require_flashable(profile)
            compat = check_bundle(bundle.manifest, profile)
        except BoardError as exc:
            raise FlashError(f"cannot install {bundle_path}: {exc}") from exc
        if not compat.fits:
            raise FlashError(f"cannot install {bundle_path} (version {bundle.version}): bundle "
                             f"{compat.summary()}; nothing was changed")
    return bundle, data


def _same_manifest(a: Manifest, b: Manifest) -> list[str]:
    # created_at changes on every pack of the same model; everything else changes behaviour.
    return [f.name for f in fields(Manifest)
            if f.name != "created_at" and getattr(a, f.name) != getattr(b, f.name)]


def _installed_state(target: Path, bundle: Bundle) -> str:
    """'same', 'damaged' (safe to overwrite) or raise because the version is taken."""
    try:
        existing = read_bundle(target)
    except BundleError as exc:
        log.warning("installed copy of %s is damaged (%s); replacing it", bundle.version, exc)
        return "damaged"
    if existing.manifest.model_sha256 != bundle.manifest.model_sha256:
        raise InstallError(
            f"version {bundle.version} is already installed with a different model (SHA-256 "
            f"{existing.manifest.model_sha256[:12]}..., new one {bundle.manifest.model_sha256[:12]}"
            "...); versions are immutable: bump the version and pack again; nothing was changed",
            "conflict")
    differ = _same_manifest(existing.manifest, bundle.manifest)
    if differ:
        raise InstallError(
            f"version {bundle.version} is already installed with the same model but a different "
            f"manifest (fields {differ}); versions are immutable: bump the version and pack "
            "again; nothing was changed", "conflict")
    return "same"


def _undo(home: BoardHome, version: str, old_current: str | None, existed: bool,
          created_dir: bool) -> None:
    # Best effort, and in this order: first make sure the pointer names the old model again,
    # then remove what this install created. Never delete a bundle the pointer still names.
    try:
        if home.current_version() == version and old_current != version:
            if old_current is None:
                home.pointer.unlink(missing_ok=True)
            else:
                home.set_current(old_current)
    except (OSError, BundleError) as exc:
        log.error("could not restore the 'current' pointer of %s: %s", home.root, exc)
        return
    if existed:
        return
    try:
        home.bundle_path(version).unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(home.version_dir(version), ignore_errors=True)
    except OSError as exc:
        log.error("could not remove the partial install of %s: %s", version, exc)


def _verify_landed(target: Path, data: bytes) -> None:
    landed = target.read_bytes()
    if sha256_hex(landed) != sha256_hex(data):
        raise FlashError(f"the copy at {target} differs from the bundle that was written "
                         f"({len(landed)} of {len(data)} bytes read back); the card may be failing")
    read_bundle(landed)


def _health(bundle: Bundle, backend: str | None) -> HealthReport:
    report = health_check(bundle, backend=backend)
    if not report.ok:
        raise InstallError(f"health check of {bundle.version} failed: {report.message}",
                           "health-check")
    return report


def install_bundle(bundle_path: str | os.PathLike[str], home: BoardHome | str | os.PathLike[str],
                   *, board: str | None = None, keep: int = 2, allow_downgrade: bool = False,
                   health_check: bool = True, backend: str | None = None) -> InstallResult:
    """Install a bundle into a board home and make it current, or leave the board as it was.

    In order: the bundle is read and verified (whole file, member names, model hash); then,
    under the home's lock, checked against what the board trusts (signature, see
    :func:`~edgemeta.bundle.init_home`), its board profile (``board`` or the home's own),
    the current version (no downgrade unless allowed) and the free space; staged beside the
    current version as ``models/<version>/model.edgemeta`` (temporary file, fsync, rename) and
    read back; health-checked (the board's runtime loads it and runs its self-test vector); the
    classes learned with the current model are re-learned with it; and only then does the
    ``current`` pointer switch, atomically. A kill at any moment leaves the old or the new model
    current, each with its classes.

    Args:
        bundle_path: The ``.edgemeta`` file to install.
        home: The board home (a folder or a mounted SD card); created if only it is missing.
        board: A board profile name to check against instead of the home's configured one.
        keep: How many installed versions to keep (at least 2: the current and the previous
            version are never pruned).
        allow_downgrade: Install even if the bundle is older than the current version.
        health_check: Load the model and run its self-test before switching. Only for hosts that
            cannot run the model (no runtime installed); the board then checks at start-up.
        backend: Interpreter backend for the health check (default: the best available).

    Returns:
        An :class:`InstallResult`; ``changed`` is False if this exact bundle was already current.

    Raises:
        InstallError: refused or failed, with ``reason`` saying why (see
            :class:`~edgemeta.errors.InstallError`). The previously current model stays current
            and no partial file is left.
        FlashError: bad ``keep``.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise FlashError(f"keep is {keep!r}; expected an integer >= 2 (the current and the "
                         "previous version are always kept)")
    try:
        bundle, data = _load(bundle_path, None)
    except FlashError as exc:
        reason = "damaged" if isinstance(exc.__cause__, BundleError) else "io"
        raise InstallError(str(exc), reason) from exc
    home = _as_home(home)
    created = prepare_home(home)
    try:
        return _install_into(bundle, data, home, board=board, keep=keep,
                             allow_downgrade=allow_downgrade, health_check=health_check,
                             backend=backend)
    except BaseException:
        if created:
            remove_if_empty(home.root)  # a refused first install leaves no empty home behind
        raise


def _install_into(bundle: Bundle, data: bytes, home: BoardHome, *, board: str | None, keep: int,
                  allow_downgrade: bool, health_check: bool,
                  backend: str | None) -> InstallResult:
    """:func:`install_bundle` once the bundle is read and the home exists."""
    version = bundle.version
    with locked(home):
        try:
            config = read_config(home)
        except BundleError as exc:
            raise InstallError(f"{exc}; nothing was changed", "io") from exc
        current = current_version(home)
        trust = check_trust(bundle, home, config)
        check_board(bundle, board or config.board)
        check_downgrade(bundle, current, allow_downgrade)
        target = home.bundle_path(version)
        try:
            sweep_partials(home, current)
            existed = target.is_file()
            same = existed and _installed_state(target, bundle) == "same"
        except OSError as exc:
            raise InstallError(f"cannot read the installed versions in {home.root}: {exc}; "
                               "nothing was changed", "io") from exc
        recorded = read_previous(home)
        if same and current == version:
            return InstallResult(version, recorded, target, changed=False, trust=trust)
        if not same:
            check_space(home, len(data), current)
        created_dir = not home.version_dir(version).exists()
        try:
            if not same:  # else already on the card (e.g. after a rollback): only switch
                atomic_write_bytes(target, data)
                _verify_landed(target, data)
            report = _health(bundle, backend) if health_check else None
            migration = migrate_state(home, current, bundle,
                                      lambda: Embedder(bundle, backend=backend))
            # The version being replaced, if any (None: first install, or a repair).
            replaced = current if current != version else None
            if replaced is not None:
                # Recorded before the switch: a kill right after it must not leave `previous`
                # naming the version before the one just replaced.
                write_previous(home, replaced)
            home.set_current(version)
        except BaseException as exc:
            if not same:
                _undo(home, version, current, existed, created_dir)
            if current is not None and current != version:
                restore_previous(home, recorded)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt/SystemExit: cleaned up, now let it through
            kept = f"{current} stays current" if current else "nothing is current"
            if isinstance(exc, InstallError):
                raise InstallError(f"{exc}; {kept}", exc.reason) from exc
            if is_disk_full(exc):
                raise InstallError(f"the board's disk filled up while installing {version} into "
                                   f"{home.root} ({exc}); {kept} and the partial copy was "
                                   "removed", "disk-full") from exc
            raise InstallError(f"installing {version} into {home.root} failed: {exc}; {kept} "
                               "and the partial copy was removed", "io") from exc
        # First install, or repair of the current one: the recorded previous version stands.
        previous = replaced if replaced is not None else recorded
        pruned = prune(home, keep, {version, previous})
        return InstallResult(version, previous, target, True, pruned, trust, report, migration)


def _rollback_target(home: BoardHome, current: str) -> str | None:
    recorded = read_previous(home)
    versions = home.installed_versions()
    if recorded is not None and recorded != current and recorded in versions:
        return recorded
    # No usable record (a home filled by hand or by an older tool): take the version installed
    # just before the current one.
    if current in versions:
        index = versions.index(current)
        return versions[index - 1] if index > 0 else None
    return versions[-1] if versions else None


def rollback(home: BoardHome | str | os.PathLike[str]) -> str:
    """Make the previously current version current again and return it.

    Rolling back twice returns to where you started (like ``cd -``): the version rolled back from
    becomes the new "previous".

    Raises:
        FlashError: nothing is installed, there is no previous version, or its bundle is damaged
            (the current model then stays current).
    """
    home = _as_home(home)
    if not home.root.is_dir():
        raise FlashError(f"board home {home.root} does not exist; nothing to roll back")
    with locked(home):
        current = current_version(home)
        if current is None:
            raise FlashError(f"board home {home.root} has no installed model; nothing to roll back")
        target = _rollback_target(home, current)
        if target is None:
            raise FlashError(f"board home {home.root}: no previous version to roll back to from "
                             f"{current} (installed: {', '.join(home.installed_versions())})")
        try:
            read_bundle(home.bundle_path(target))
        except BundleError as exc:
            raise FlashError(f"cannot roll back to {target}: {exc}; {current} stays "
                             "current") from exc
        try:
            home.set_current(target)
        except OSError as exc:
            raise FlashError(f"cannot roll back to {target}: {exc}; {current} stays current") from exc
        write_previous(home, current)
        return target


def installed(home: BoardHome | str | os.PathLike[str]) -> list[str]:
    """Versions installed in ``home``, oldest first (empty if the home does not exist)."""
    return _as_home(home).installed_versions()
