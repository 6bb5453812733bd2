"""The ``edgemeta`` click group; the commands live in the sibling modules.

Host-side imports (TensorFlow) happen inside the commands that need them, so board commands such
as ``edgemeta device run`` start without TensorFlow.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import click

from edgemeta import __version__
from edgemeta.errors import EdgemetaError

__all__ = ["cli", "describe_os_error"]


# What the user should have given, per errno: the OS says what went wrong, not what was expected.
_EXPECTED = {
    errno.ENOENT: "expected an existing file or folder",
    errno.ENOTDIR: "expected a folder there, not a file",
    errno.EISDIR: "expected a file there, not a folder",
    errno.EACCES: "expected a path this user may read and write",
    errno.EPERM: "expected a path this user may read and write",
    errno.EROFS: "expected a writable filesystem",
    errno.ENOSPC: "expected enough free space; free some and try again",
    errno.EDQUOT: "expected enough free space; free some and try again",
    errno.ECONNREFUSED: "expected a server listening at that address and port",
    errno.ETIMEDOUT: "expected a reachable host",
    errno.EHOSTUNREACH: "expected a reachable host",
    errno.ENETUNREACH: "expected a reachable network",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: which path, what the OS said, and what was expected."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc) or type(exc).__name__
    fallback = ("expected a path that can be read and written" if where
                else "expected the machine's files and network to allow it")
    expected = _EXPECTED.get(exc.errno or 0, fallback)
    return f"{where + ': ' if where else ''}{what}; {expected}"


class _Group(click.Group):
    """Turns every EdgemetaError, and an OSError (permission, missing folder, full disk,
    refused connection), into one clear line and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgemetaError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # output piped into `head`: click's main exits quietly on this one
            raise click.ClickException(describe_os_error(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgemeta")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """edgemeta: few-shot models from a workstation to a fleet of edge boards."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

