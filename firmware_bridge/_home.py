"""Operations on a board home's layout for the installer: its lock, the ``previous`` record,
leftover sweeping and pruning.

Beside ``current`` (owned by :class:`edgemeta.bundle.BoardHome`) the home gets one more small
pointer file, ``previous``, naming the version that was current before the last switch; rollback
and pruning rely on it because directory modification times are too coarse on FAT (2 s) to order
installs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from edgemeta.bundle import BoardHome, atomic_write_bytes, read_bundle, validate_version
from edgemeta.errors import BundleError, FlashError, InstallError

try:  # advisory locking so two installs into one home cannot interleave; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # a module or None, by platform

log = logging.getLogger("firmware_bridge.install")

PREVIOUS_POINTER = "previous"
# Names atomic_write_bytes gives its temporary files; left behind only if a process was killed.
_TMP_RE = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]+$")


def prepare_home(home: BoardHome) -> bool:
    """Make sure the home folder exists; True if this call created it."""
    root = home.root
    if root.is_dir():
        return False
    if root.exists():
        raise FlashError(f"board home {root} is not a directory; expected a folder (or an SD card "
                         "mount point)")
    # Create the home itself but never its parents: a typo in the path should not silently build a
    # directory tree somewhere the user did not mean.
    if not root.parent.is_dir():
        raise FlashError(f"board home {root} does not exist and neither does its parent "
                         f"{root.parent}; create it or check the path")
    try:
        root.mkdir()
    except FileExistsError:
        return False
    except OSError as exc:
        raise FlashError(f"cannot create board home {root}: {exc}") from exc
    return True


def remove_if_empty(root: Path) -> None:
    """Remove a home folder tree that holds no file (only empty folders); else leave it be."""
    try:
        if any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
            return
        for d in sorted((p for p in root.rglob("*")), key=lambda p: len(p.parts), reverse=True):
            d.rmdir()
        root.rmdir()
    except OSError:  # a file appeared, or no permission: keeping an empty folder is harmless
        pass


@contextlib.contextmanager
def locked(home: BoardHome) -> Iterator[None]:
    # flock on the home directory itself, so no lock file is ever left in the home.
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(home.root, os.O_RDONLY)
        except OSError:
            fd = None
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise InstallError(f"board home {home.root} is busy: another install or rollback is "
                               "running; try again when it has finished", "busy") from exc
        except OSError as exc:
            # e.g. ENOLCK on some network or FAT mounts: installing without the lock is what
            # a user would expect there; the write order alone keeps the board consistent.
            log.warning("cannot lock board home %s (%s); installing without the lock",
                        home.root, exc)
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def current_version(home: BoardHome) -> str | None:
    try:
        return home.current_version()
    except BundleError as exc:
        raise FlashError(f"board home {home.root}: the 'current' pointer is damaged ({exc}); "
                         "fix or delete it, then install again") from exc


def read_previous(home: BoardHome) -> str | None:
    # Advisory only: a missing or garbled file just means "no recorded previous version".
    try:
        text = (home.root / PREVIOUS_POINTER).read_text(encoding="utf-8").strip()
        return validate_version(text)
    except (OSError, UnicodeDecodeError, BundleError):
        return None


def write_previous(home: BoardHome, version: str) -> None:
    # Called after the switch, which already succeeded: failing here must not fail the install.
    try:
        atomic_write_bytes(home.root / PREVIOUS_POINTER, (version + "\n").encode())
    except OSError as exc:
        log.warning("could not record %s as the previous version in %s: %s", version, home.root, exc)


def restore_previous(home: BoardHome, recorded: str | None) -> None:
    # Undo an early `previous` write when the switch did not happen.
    try:
        if recorded is None:
            (home.root / PREVIOUS_POINTER).unlink(missing_ok=True)
        else:
            atomic_write_bytes(home.root / PREVIOUS_POINTER, (recorded + "\n").encode())
    except OSError as exc:
        log.warning("could not restore the previous-version record of %s: %s", home.root, exc)


def sweep_partials(home: BoardHome, current: str | None) -> None:
    """Remove leftovers of an install that was killed before its own cleanup could run.

    Only under ``models/``, which nothing but install writes (and only under the lock); temporary
    files elsewhere in the home may belong to a running agent.
    """
    if not home.models_dir.is_dir():
        return
    for vdir in home.models_dir.iterdir():
        if not vdir.is_dir():
            continue
        for tmp in vdir.iterdir():
            if tmp.is_file() and _TMP_RE.match(tmp.name):
                tmp.unlink(missing_ok=True)
        if vdir.name != current and not any(vdir.iterdir()):
            vdir.rmdir()


def model_sha(home: BoardHome, version: str) -> str | None:
    try:
        return read_bundle(home.bundle_path(version)).manifest.model_sha256
    except (BundleError, OSError):
        return None


def prune(home: BoardHome, keep: int, protected: set[str | None]) -> tuple[str, ...]:
    # `protected` is passed in rather than re-read so that a failed write of the `previous`
    # file can never get the real previous version pruned.
    try:
        versions = home.installed_versions()  # oldest first
    except OSError as exc:  # after the switch: the install succeeded, pruning can wait
        log.warning("could not list installed versions of %s to prune: %s", home.root, exc)
        return ()
    excess = len(versions) - keep
    pruned: list[str] = []
    for version in versions:
        if excess <= 0:
            break
        if version in protected:
            continue
        try:
            sha = model_sha(home, version)
            # Remove the bundle first: without it the version no longer counts as installed,
            # so a crash half-way through rmtree leaves an empty directory, not a broken model.
            home.bundle_path(version).unlink()
            shutil.rmtree(home.version_dir(version))
            if sha is not None and sha not in {model_sha(home, v) for v in home.installed_versions()}:
                # Its classes were carried to the newer models; stale state must not come back
                # if this version is ever installed again.
                shutil.rmtree(home.prototypes_path(sha).parent, ignore_errors=True)
        except (OSError, BundleError) as exc:
            log.warning("could not prune %s from %s: %s", version, home.root, exc)
            continue
        pruned.append(version)
        excess -= 1
    return tuple(pruned)
