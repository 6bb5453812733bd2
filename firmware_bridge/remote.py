"""The board side of remote transports: ``python -m firmware_bridge.remote install|rollback|status``.

A host-side transport (e.g. :class:`firmware_bridge.ssh.SSHTransport`) runs this module on the
board and streams the bundle to it on stdin. The module does no checking of its own: it hands the
bundle to :func:`firmware_bridge.install.install_bundle`, so a remote install is verified, checked
against the home's policy and switched atomically exactly like a local one.

Whatever happens, the module prints exactly ONE JSON line on stdout, the last thing it prints::

    {"ok": true, "version": "1.2.0", "previous_version": "1.1.0", "changed": true, ...}
    {"ok": false, "error": "<message>", "reason": "<code>"}

and exits 0 (ok) or 1 (refused or failed); 2 means bad arguments (argparse's message on stderr).
``reason`` is :attr:`edgemeta.errors.InstallError.reason` when the install raised one, else
``"io"``.

Board-side safe: imports only the stdlib, ``edgemeta.bundle``/``errors`` and ``firmware_bridge``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from edgemeta.bundle import MAX_BUNDLE_BYTES, BoardHome
from edgemeta.errors import EdgemetaError, InstallError
from firmware_bridge.install import install_bundle, installed, rollback

__all__ = ["INCOMING_PREFIX", "main", "receive_bundle"]

# Bundles in transit are written inside the home (same filesystem, and never anywhere else on the
# board) under this prefix; install_bundle then copies them into models/ atomically.
INCOMING_PREFIX = ".incoming-"
# An incoming file this old belongs to a push that was killed hard (e.g. power loss).
_STALE_INCOMING_S = 24 * 3600
_CHUNK = 1024 * 1024


def _emit(reply: dict[str, Any]) -> None:
    # default=str: an odd value in a report (e.g. a numpy number) must not cost the reply.
    sys.stdout.write(json.dumps(reply, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SystemExit):
        return {"ok": False, "reason": "io", "error": f"interrupted (exit status {exc.code}); "
                "the install is atomic: the previous model stays current unless the switch "
                "had already completed"}
    reason = getattr(exc, "reason", None) if isinstance(exc, InstallError) else None
    return {"ok": False, "error": str(exc) or type(exc).__name__, "reason": reason or "io"}


def _terminate(signum: int, _frame: object) -> None:
    # Default SIGTERM/SIGHUP handling would skip `finally` blocks and leave the incoming file (and
    # possibly a half-made version directory) behind; SystemExit runs every cleanup.
    raise SystemExit(128 + signum)


def _ensure_home(home: BoardHome) -> bool:
    """Create the home (never its parents, as install_bundle does); True if it was created."""
    root = home.root
    if root.is_dir():
        return False
    if root.exists():
        raise InstallError(f"board home {root} is not a directory; expected a folder", "io")
    if not root.parent.is_dir():
        raise InstallError(f"board home {root} does not exist and neither does its parent "
                           f"{root.parent}; create it on the board or check the path", "io")
    try:
        root.mkdir()
    except FileExistsError:
        return False
    except OSError as exc:
        raise InstallError(f"cannot create board home {root}: {exc}", "io") from exc
    return True


def _sweep_stale_incoming(home: BoardHome) -> None:
    # Best effort: a push that is running right now has a young file and is left alone.
    cutoff = time.time() - _STALE_INCOMING_S
    try:
        for path in home.root.glob(INCOMING_PREFIX + "*"):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
    except OSError:
        pass


def receive_bundle(source: BinaryIO, home: BoardHome) -> Path:
    """Copy a bundle from ``source`` into a new incoming file inside ``home`` and return its path.

    Reads at most :data:`MAX_BUNDLE_BYTES` (one byte more means the sender is wrong, and the file
    is removed). The caller removes the returned file when done.

    Raises:
        InstallError: the stream is empty or too large (reason ``damaged``), or writing failed
            (``disk-full`` or ``io``).
    """
    fd, name = tempfile.mkstemp(prefix=INCOMING_PREFIX, suffix=".edgemeta", dir=home.root)
    path = Path(name)
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(min(_CHUNK, MAX_BUNDLE_BYTES + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_BUNDLE_BYTES:
                    raise InstallError(f"the bundle sent is larger than {MAX_BUNDLE_BYTES} bytes, "
                                       "the most a board accepts; nothing was changed", "damaged")
                out.write(chunk)
        if total == 0:
            raise InstallError("no bundle was received on stdin (0 bytes); nothing was changed",
                               "damaged")
    except OSError as exc:
        path.unlink(missing_ok=True)
        reason = "disk-full" if getattr(exc, "errno", None) == 28 else "io"  # 28: ENOSPC
        raise InstallError(f"cannot store the incoming bundle in {home.root}: {exc}; nothing "
                           "was changed", reason) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _install(args: argparse.Namespace) -> dict[str, Any]:
    home = BoardHome.at(args.home)
    created = _ensure_home(home)
    _sweep_stale_incoming(home)
    incoming: Path | None = None
    try:
        incoming = receive_bundle(sys.stdin.buffer, home)
        result = install_bundle(incoming, home, keep=args.keep,
                                allow_downgrade=args.allow_downgrade)
    except BaseException:
        if incoming is not None:
            incoming.unlink(missing_ok=True)
        if created:  # leave no empty home behind for a push that installed nothing
            _remove_if_empty(home)
        raise
    if incoming is not None:
        incoming.unlink(missing_ok=True)
    reply = {"ok": True, "version": result.version, "previous_version": result.previous_version,
             "changed": result.changed, "pruned": list(result.pruned), "path": str(result.path)}
    # What the board checked, for the host to show; getattr: older installers lack these fields.
    for name in ("trust", "health", "migration"):
        value = getattr(result, name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            reply[name] = dataclasses.asdict(value)
        else:
            reply[name] = value
    return reply


def _remove_if_empty(home: BoardHome) -> None:
    try:
        home.root.rmdir()  # fails (harmlessly) unless the home is empty
    except OSError:
        pass


def _rollback(args: argparse.Namespace) -> dict[str, Any]:
    home = BoardHome.at(args.home)
    return {"ok": True, "version": rollback(home)}


def _status(args: argparse.Namespace) -> dict[str, Any]:
    home = BoardHome.at(args.home)
    try:
        current = home.current_version()
    except EdgemetaError as exc:
        raise InstallError(str(exc), "damaged") from exc
    return {"ok": True, "current": current, "installed": installed(home), "home": str(home.root)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_bridge.remote",
        description="Board side of edgemeta's remote transports; replies with one JSON line.")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="install the bundle read from stdin")
    install.add_argument("--home", required=True, help="the board home")
    install.add_argument("--stdin", action="store_true", required=True,
                         help="read the bundle from stdin (the only source, made explicit)")
    install.add_argument("--keep", type=int, default=2, help="installed versions to keep")
    install.add_argument("--allow-downgrade", action="store_true",
                         help="let an older version replace a newer one")
    install.set_defaults(run=_install)
    for name, run, text in (("rollback", _rollback, "make the previous version current again"),
                            ("status", _status, "report the current and installed versions")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--home", required=True, help="the board home")
        cmd.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one remote command, print its JSON reply line, and return the exit status."""
    args = _parser().parse_args(argv)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _terminate)
    try:
        reply = args.run(args)
    except (Exception, SystemExit) as exc:  # SystemExit: killed by a signal, still reply
        reply = _failure(exc)
        _emit(reply)
        return 1
    _emit(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
