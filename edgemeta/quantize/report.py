"""Float vs int8 few-shot accuracy on identical episodes.

The int8 side runs exactly as a board does: ``FewShotClassifier`` on raw images, preprocessing
from the manifest, enroll the support set, classify the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgemeta.bundle import Bundle
from edgemeta.data import Episode, ImageClassDataset
from edgemeta.errors import ConfigError
from edgemeta.meta.evaluate import Accuracy, embed_float, episode_accuracies, summarize
from edgemeta.runtime.classifier import FewShotClassifier

__all__ = ["QuantReport", "int8_episode_accuracies", "compare_float_int8"]


@dataclass(frozen=True)
class QuantReport:
    """Float vs int8 few-shot accuracy on identical episodes, and the model sizes.

    Attributes:
        float_accuracy: The float model that was converted (after pruning, if pruned).
        int8_accuracy: The int8 bundle through the board runtime.
        unpruned_accuracy: The float model before pruning, if it was pruned: without it a
            pruned model's report compares pruned float with pruned int8 and hides what
            pruning itself cost.
    """

    n_way: int
    k_shot: int
    float_accuracy: Accuracy
    int8_accuracy: Accuracy
    float_bytes: int | None
    int8_bytes: int
    unpruned_accuracy: Accuracy | None = None

    @property
    def drop_points(self) -> float:
        """Float minus int8 accuracy in percentage points."""
        return 100.0 * (self.float_accuracy.mean - self.int8_accuracy.mean)

    @property
    def pruning_drop_points(self) -> float | None:
        """Unpruned float minus int8 accuracy in percentage points (None if not pruned)."""
        if self.unpruned_accuracy is None:
            return None
        return 100.0 * (self.unpruned_accuracy.mean - self.int8_accuracy.mean)

    def lines(self) -> list[str]:
        out = [f"{self.n_way}-way {self.k_shot}-shot on unseen classes, "
               f"{self.int8_accuracy.episodes} identical episodes:",
               f"  float : {self.float_accuracy}",
               f"  int8  : {self.int8_accuracy}   (float - int8 = {self.drop_points:+.2f} points)"]
        if self.unpruned_accuracy is not None:
            out.insert(1, f"  before pruning, float : {self.unpruned_accuracy}   (unpruned float - "
                          f"int8 = {self.pruning_drop_points:+.2f} points)")
        size = f"  size  : int8 .tflite {self.int8_bytes / 1024:.1f} KiB"
        if self.float_bytes:
            size += f", float .tflite {self.float_bytes / 1024:.1f} KiB " \
                    f"({self.float_bytes / self.int8_bytes:.1f}x larger)"
        out.append(size)
        return out


def int8_episode_accuracies(bundle: Bundle, dataset: ImageClassDataset, episodes: Sequence[Episode],
                            backend: str | None = None) -> list[float]:
    """Per-episode accuracy of the int8 bundle through the board runtime."""
    clf = FewShotClassifier(bundle, backend=backend)
    accs = []
    for ep in episodes:
        for label in list(clf.labels):
            clf.forget(label)
        for c in range(ep.support.shape[0]):
            clf.enroll(f"c{c}", dataset.images[ep.support[c]])
        preds = clf.classify(dataset.images[ep.query.reshape(-1)])
        truth = np.repeat([f"c{c}" for c in range(ep.query.shape[0])], ep.query.shape[1])
        accs.append(float(np.mean([p.label == t for p, t in zip(preds, truth)])))
    return accs


def compare_float_int8(model: Any, x: np.ndarray, bundle: Bundle, dataset: ImageClassDataset,
                       episodes: Sequence[Episode], float_bytes: int | None = None,
                       backend: str | None = None, unpruned_model: Any = None) -> QuantReport:
    """Score the Keras model and the int8 bundle on the same episodes of ``dataset``.

    Args:
        model: The float Keras embedding network.
        x: ``dataset`` preprocessed with the bundle's preprocessing (for the float model).
        bundle: The int8 bundle.
        dataset: Unseen classes, raw images (for the board runtime).
        episodes: The episodes both are scored on.
        unpruned_model: The float model before pruning, when ``model`` is a pruned copy: it is
            scored on the same episodes so that the report shows the whole drop.
    """
    if not episodes:
        raise ConfigError("the float-vs-int8 report needs at least one episode")
    m = bundle.manifest

    def float_accuracy(net: Any) -> Accuracy:
        return summarize(episode_accuracies(embed_float(net, x, normalize=m.normalize_embeddings,
                                                        shifts=m.test_time_shifts),
                                            episodes, m.distance))

    int8_accs = int8_episode_accuracies(bundle, dataset, episodes, backend)
    n_way, k_shot = episodes[0].support.shape
    unpruned = None if unpruned_model is None else float_accuracy(unpruned_model)
    return QuantReport(int(n_way), int(k_shot), float_accuracy(model), summarize(int8_accs),
                       float_bytes, len(bundle.model), unpruned)
