"""The ``edgemeta`` click group; the commands live in the sibling modules.

Host-side imports (TensorFlow) happen inside the commands that need them, so board commands such
as ``edgemeta device run`` start without TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from edgemeta import __version__
from edgemeta.errors import EdgemetaError

__all__ = ["cli"]


class _Group(click.Group):
    """Turns every EdgemetaError into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgemetaError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgemeta")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """edgemeta: few-shot models from a workstation to a fleet of edge boards."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

