"""The ``edgemeta`` command line. Thin: every command calls into the packages.

Host-side imports (TensorFlow) happen inside the commands that need them, so board commands such
as ``edgemeta device run`` start without TensorFlow. Each module registers its commands on the
one group in :mod:`edgemeta.cli._base`: ``host`` (train, convert, adapt, demo), ``flash``
(inspect, boards, check, flash, rollback, export), ``trust`` (keys, bundle, board), ``board``
(enroll, classify, device) and ``fleet``.
"""

from edgemeta.cli import board, flash, fleet, host, trust  # noqa: F401  (registers the commands)
from edgemeta.cli._base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="edgemeta")
