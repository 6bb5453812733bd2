"""FewShotClassifier: load a bundle, enroll classes from a few examples, classify."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgemeta.bundle import BoardHome, Bundle, Manifest, read_bundle
from edgemeta.errors import BundleError, InputError, StateError
from edgemeta.runtime.embedder import Embedder, output_details
from edgemeta.runtime.examples import to_uint8
from edgemeta.runtime.preprocess import ImageLike, preprocess_batch
from edgemeta.runtime.prototypes import Prediction, PrototypeStore

__all__ = ["FewShotClassifier"]

log = logging.getLogger(__name__)


class FewShotClassifier:
    """Few-shot classification on the board: enroll by prototype updates, classify by distance.

    Example::

        clf = FewShotClassifier.load("model.edgemeta")   # or a board home directory
        clf.enroll("cat", ["cat1.png", "cat2.png"])
        clf.classify(["query.png"])                       # [Prediction(label='cat', score=0.97)]
    """

    def __init__(self, bundle: Bundle, *, backend: str | None = None, num_threads: int = 1,
                 home: BoardHome | None = None) -> None:
        self.bundle = bundle
        self.embedder = Embedder(bundle, backend=backend, num_threads=num_threads)
        self.home = home
        m = bundle.manifest
        expected = (*m.input.preprocessing.size, m.input.preprocessing.channels)
        if self.embedder.input_shape != expected:
            raise BundleError(f"model input is {self.embedder.input_shape} but the manifest's "
                              f"preprocessing makes {expected}: the bundle is inconsistent")
        # Checked here, once: otherwise every enroll fails on the prototypes' shape, which
        # reads as if the user's images were wrong.
        out_dim = int(output_details(self.embedder.interpreter)["shape"][-1])
        if out_dim != m.embedding_dim:
            raise BundleError(f"model output is {out_dim}-d but the manifest says embedding_dim "
                              f"{m.embedding_dim}: the bundle is inconsistent")
        self.store = PrototypeStore(m.embedding_dim, m.model_sha256, m.distance)
        if home is not None:
            self._restore(home.prototypes_path(m.model_sha256))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backend: str | None = None,
             num_threads: int = 1) -> "FewShotClassifier":
        """Load from a bundle file, or from a board home (its current bundle and saved prototypes)."""
        p = Path(path)
        if p.is_dir():
            home = BoardHome.at(p)
            return cls(read_bundle(home.current_bundle()), backend=backend,
                       num_threads=num_threads, home=home)
        return cls(read_bundle(p), backend=backend, num_threads=num_threads)

    def _restore(self, path: Path) -> None:
        """Load what was learned with this model; a damaged file is set aside, never deleted."""
        if not path.exists():
            return
        try:
            stored = PrototypeStore.load(path, self.manifest.distance)
            if stored.model_sha256 != self.manifest.model_sha256:
                raise StateError(f"{path} was learned with model {stored.model_sha256[:12]}..., "
                                 f"not {self.manifest.model_sha256[:12]}...")
            if stored.embedding_dim != self.manifest.embedding_dim:
                raise StateError(f"{path} holds {stored.embedding_dim}-d prototypes; "
                                 f"expected {self.manifest.embedding_dim}-d")
        except StateError as exc:
            # A board must keep running: start empty, keep the bad file for inspection.
            aside = _free_name(path.with_name(f"{path.name}.corrupt-{int(time.time())}"))
            try:
                os.replace(path, aside)
            except OSError as err:  # read-only card: still start, and say the file stayed
                log.error("%s; could not move it aside (%s); started with no classes enrolled",
                          exc, err)
                return
            log.error("%s; moved it to %s and started with no classes enrolled", exc, aside)
            return
        self.store = stored

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def backend(self) -> str:
        return self.embedder.backend

    @property
    def labels(self) -> list[str]:
        """Enrolled labels, in enrollment order."""
        return self.store.labels

    def _preprocess(self, images: Iterable[ImageLike] | np.ndarray) -> np.ndarray:
        x = preprocess_batch(images, self.manifest.input.preprocessing)
        if len(x) == 0:
            raise InputError("no images given; expected at least one image")
        return x

    def embed(self, images: Iterable[ImageLike] | np.ndarray) -> np.ndarray:
        """Preprocess per the manifest and embed; returns (N, D) float32."""
        return self.embedder.embed(self._preprocess(images))

    def enroll(self, label: str, images: Sequence[ImageLike] | np.ndarray) -> int:
        """Add examples of ``label`` (new or existing); returns how many examples it now has.

        A bounded sample of the preprocessed images is kept with the prototypes so that a model
        update can re-learn the class (see :mod:`edgemeta.runtime.examples`).
        """
        self.store.validate_label(label)  # before the (slower) embedding
        x = self._preprocess(images)
        embeddings = self.embedder.embed(x)
        kept = to_uint8(x, self.manifest.input.preprocessing)
        if label in self.store.examples.labels and \
                self.store.examples.images(label).shape[1:] != kept.shape[1:]:
            self.store.examples.forget(label)  # stored at another model's size: start afresh
        self.store.examples.add(label, kept)  # checked first: a failure changes nothing
        self.store.update(label, embeddings)
        return self.store.count(label)

    def classify(self, images: Sequence[ImageLike] | np.ndarray) -> list[Prediction]:
        """Predictions in input order."""
        if not self.labels:
            raise InputError("no classes are enrolled; call enroll(label, images) first")
        return self.store.classify(self.embed(images))

    def forget(self, label: str) -> None:
        """Remove an enrolled class."""
        self.store.forget(label)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Persist what was learned, crash-safely; default: the board home's state file.

        Raises:
            InputError: no path was given and the classifier has no board home.
            StateError: the file could not be written (e.g. a full disk); the previous state
                file is unchanged.
        """
        if path is None:
            if self.home is None:
                raise InputError("save() needs a path when the classifier was not loaded from a board home")
            path = self.home.prototypes_path(self.manifest.model_sha256)
        return self.store.save(path)


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``...: the first that does not exist (never overwrite)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
