"""Carrying what a board learned from one model to the next.

Before a new model becomes current, the classes enrolled with the current model are re-learned
with the new one from the examples kept beside the prototypes
(:mod:`edgemeta.runtime.examples`), and written to the new model's state file. The old model's
state stays where it was, so a rollback finds its prototypes exactly as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from edgemeta.bundle import BoardHome, Bundle, read_bundle
from edgemeta.errors import EdgemetaError, StateError
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.examples import reembed
from edgemeta.runtime.prototypes import PrototypeStore

__all__ = ["Migration", "migrate_state"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """What :func:`migrate_state` did.

    Attributes:
        relearned: Labels re-learned with the new model from their kept examples.
        lost: Labels the new model could not learn (no kept examples, or stored with another
            number of channels). They stay enrolled with the old model.
        source: The version whose state was carried over (None: nothing to carry).
    """

    relearned: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    source: str | None = None


def _load_store(home: BoardHome, bundle: Bundle) -> PrototypeStore | None:
    path = home.prototypes_path(bundle.manifest.model_sha256)
    if not path.exists():
        return None
    try:
        return PrototypeStore.load(path, bundle.manifest.distance)
    except StateError as exc:
        # The runtime sets a damaged file aside when it loads it; here we only must not crash.
        log.warning("cannot carry classes over from %s: %s", path, exc)
        return None


def migrate_state(home: BoardHome, current: str | None, new: Bundle,
                  embedder: Callable[[], Embedder]) -> Migration:
    """Re-learn the current model's classes with ``new`` and save them as its state.

    Written atomically before the switch: killed before, nothing changed; killed after, the new
    model starts with its classes. A model update to the *same* model (a repack) keeps the state
    file untouched, since it is already right.

    Args:
        home: The board home.
        current: The current version (None on a first install).
        new: The verified, health-checked bundle about to become current.
        embedder: Makes an embedder for ``new``'s model; called only if there is something to
            re-learn.
    """
    if current is None or current == new.version:
        return Migration()
    try:
        old = read_bundle(home.bundle_path(current))
    except EdgemetaError as exc:
        log.warning("cannot read the current bundle %s to carry its classes over: %s", current, exc)
        return Migration(source=current)
    if old.manifest.model_sha256 == new.manifest.model_sha256:
        return Migration(source=current)
    store = _load_store(home, old)
    if store is None or not store.labels:
        return Migration(source=current)
    m = new.manifest
    fresh = reembed(store.examples, embedder().embed, m.input.preprocessing)
    target = PrototypeStore(m.embedding_dim, m.model_sha256, m.distance)
    existing = _load_store(home, new)
    if existing is not None:
        # Installed before (e.g. the version rolled back from): keep what only it knew.
        for label in existing.labels:
            target.set_prototype(label, existing.mean(label), existing.count(label))
        target.examples = existing.examples
    relearned = []
    for label in store.labels:
        if label not in fresh.means:
            continue
        target.set_prototype(label, fresh.means[label], store.count(label))
        target.examples.put(label, fresh.images[label], store.examples.seen(label))
        relearned.append(label)
    lost = tuple(x for x in store.labels if x not in fresh.means and x not in target.labels)
    target.save(home.prototypes_path(m.model_sha256))
    return Migration(tuple(relearned), lost, current)
