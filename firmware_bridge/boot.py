"""Start-up on the board: load the current model, and roll back by itself if it cannot run.

An install health-checks a model before switching to it, but a card can still go bad later, or a
model may have been installed with the check skipped (from a host without a runtime). A board
that cannot start its current model rolls back to the previous version, once, and says why,
rather than staying down until someone reaches it.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

from edgemeta.bundle import BoardHome
from edgemeta.errors import BackendError, BundleError, FlashError
from edgemeta.runtime.backends import available_backends
from edgemeta.runtime.classifier import FewShotClassifier
from edgemeta.runtime.health import health_check
from firmware_bridge.install import rollback

__all__ = ["Started", "start_classifier"]

log = logging.getLogger(__name__)


class Started(NamedTuple):
    """The classifier the board runs, and a note if it had to roll back to get it."""

    classifier: FewShotClassifier
    rolled_back: str | None = None


def _try_load(home: BoardHome, backend: str | None, num_threads: int) -> FewShotClassifier:
    clf = FewShotClassifier.load(home.root, backend=backend, num_threads=num_threads)
    report = health_check(clf.bundle, backend=backend)
    if not report.ok:
        raise BundleError(f"model {clf.manifest.version} fails its health check: {report.message}")
    return clf


def start_classifier(home: str | os.PathLike[str] | BoardHome, *, backend: str | None = None,
                     num_threads: int = 1) -> Started:
    """Load the board's current model, rolling back once if it cannot start.

    Raises:
        BundleError: nothing is installed, or the current model cannot start and there is no
            working previous version (the message says both problems).
    """
    home = home if isinstance(home, BoardHome) else BoardHome.at(home)
    try:
        return Started(_try_load(home, backend, num_threads))
    except (BundleError, BackendError) as exc:
        bad = _current_or_none(home)
        # No runtime at all is this machine's problem, not the model's: rolling back would
        # only flip between versions on every start.
        if bad is None or not available_backends():
            raise
        problem = str(exc)
    try:
        good = rollback(home)
    except FlashError as exc:
        raise BundleError(f"the current model {bad} cannot start ({problem}) and rolling back "
                          f"failed: {exc}") from exc
    try:
        started = _try_load(home, backend, num_threads)
    except (BundleError, BackendError) as exc:
        rollback(home)  # neither starts: leave the board as it was found
        raise BundleError(f"the current model {bad} cannot start ({problem}), and neither can "
                          f"the previous version {good} ({exc})") from exc
    note = f"rolled back from {bad} to {good} because {bad} cannot start: {problem}"
    log.error("%s", note)
    return Started(started, note)


def _current_or_none(home: BoardHome) -> str | None:
    try:
        return home.current_version()
    except BundleError:
        return None
