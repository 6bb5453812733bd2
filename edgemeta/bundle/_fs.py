"""Crash-safe file replacement, shared by bundles, board homes and the prototype store."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_create_bytes"]


def _read_umask() -> int:
    # os.umask can only be read by setting it; doing that once at import, not on every write,
    # keeps other threads (MQTT, the agent) from creating files during a umask(0) window.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    Writes a uniquely named temporary file in the same directory, fsyncs it, renames it over
    ``path`` and fsyncs the directory so the rename itself is durable.

    Args:
        path: The file to replace.
        data: Its new content.
        mode: Permission bits (e.g. 0o600 for a private key); default: what ``open()`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _mkstemp_for(path)
    tmp = Path(tmp_name)
    try:
        # Owned by the file object at once, so a failing fchmod cannot leak the descriptor.
        fh = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            # mkstemp makes the file private (0600); give it the permissions a plain open() would.
            os.fchmod(fh.fileno(), (0o666 & ~_UMASK) if mode is None else mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _naming(exc, path, tmp) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _mkstemp_for(path: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path, None) from exc


def _naming(exc: OSError, path: Path, tmp: Path | None) -> OSError:
    """``exc`` about ``path``: the user gave ``path``, not our temporary name (or none at all)."""
    if exc.filename is not None and (tmp is None or Path(exc.filename) != tmp) \
            and not str(Path(exc.filename).name).startswith(f".{path.name}.tmp-"):
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def atomic_create_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Create ``path`` with ``data``, atomically, failing if it exists (never overwrites).

    The content is written and fsynced under a temporary name, then hard-linked to ``path``:
    the link fails if ``path`` exists, even if it appeared a moment ago, and a crash leaves
    either no file or the whole one.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _mkstemp_for(path)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), (0o666 & ~_UMASK) if mode is None else mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links (FAT, some network filesystems): exclusive create
            with open(path, "xb") as out:
                if mode is not None:
                    os.fchmod(out.fileno(), mode)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
