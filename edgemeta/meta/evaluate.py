"""Few-shot evaluation on fixed episodes, shared by training validation and the int8 report."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from edgemeta._deps import require
from edgemeta.runtime.preprocess import shifted_views
from edgemeta.runtime.prototypes import classify_embeddings, compute_prototypes, l2_normalize

__all__ = ["Accuracy", "embed_float", "episode_accuracies", "summarize"]


class Accuracy(NamedTuple):
    """Mean accuracy over episodes with a 95 % confidence half-width (normal approximation)."""

    mean: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} % ± {100 * self.ci95:.2f}"


def summarize(accuracies: Sequence[float]) -> Accuracy:
    a = np.asarray(accuracies, dtype=np.float64)
    if len(a) == 0:
        return Accuracy(float("nan"), float("nan"), 0)
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return Accuracy(float(a.mean()), float(half), len(a))


def embed_float(model: Any, x: np.ndarray, batch_size: int = 256, normalize: bool = False,
                shifts: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Embed preprocessed images with a Keras model in inference mode, compiled (never eager).

    ``normalize`` and ``shifts`` (extra test-time views, averaged) do what the board does for a
    manifest with ``normalize_embeddings`` and ``test_time_shifts``.
    """
    if shifts:
        views = shifted_views(x, ((0, 0), *shifts))
        emb = embed_float(model, views, batch_size).reshape(len(shifts) + 1, len(x), -1).mean(0)
        return l2_normalize(emb) if normalize else emb
    tf = require("tensorflow", "float evaluation")
    fn = getattr(model, "_edgemeta_embed_fn", None)
    if fn is None:
        fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        model._edgemeta_embed_fn = fn
    out = [fn(tf.constant(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    emb = np.concatenate(out).astype(np.float32)
    return l2_normalize(emb) if normalize else emb


def episode_accuracies(embeddings: np.ndarray, episodes: Sequence[Any],
                       metric: str = "squared_euclidean") -> list[float]:
    """Nearest-prototype accuracy per episode, from embeddings indexed like the dataset.

    Uses the board runtime's own prototype functions, so float and int8 are scored alike.
    """
    accs = []
    for ep in episodes:
        n_way, k_shot = ep.support.shape
        labels = [str(c) for c in range(n_way)]
        support_labels = np.repeat(labels, k_shot)
        names, protos, _ = compute_prototypes(embeddings[ep.support.reshape(-1)], support_labels)
        preds = classify_embeddings(embeddings[ep.query.reshape(-1)], names, protos, metric)
        truth = np.repeat(labels, ep.query.shape[1])
        accs.append(float(np.mean([p.label == t for p, t in zip(preds, truth)])))
    return accs
