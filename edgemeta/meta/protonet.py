"""Prototypical networks (Snell et al., 2017): the loss as a pure function, the step compiled."""

from __future__ import annotations

from typing import Any

from edgemeta._deps import require

__all__ = ["prototypical_logits", "prototypical_loss"]

# Imported once here, not inside the traced functions: AutoGraph would try to convert the import.
tf = require("tensorflow", "prototypical networks")


def prototypical_logits(support: Any, query: Any, n_way: int, k_shot: int) -> Any:
    """Negative squared Euclidean distances (Q, n_way) from queries to class means.

    ``support`` is (n_way * k_shot, D) ordered class-major (all shots of class 0 first).
    """
    prototypes = tf.reduce_mean(tf.reshape(support, (n_way, k_shot, -1)), axis=1)
    d = (tf.reduce_sum(query ** 2, axis=1, keepdims=True)
         - 2.0 * tf.matmul(query, prototypes, transpose_b=True)
         + tf.reduce_sum(prototypes ** 2, axis=1)[None, :])
    return -d


def prototypical_loss(support: Any, query: Any, query_labels: Any, n_way: int, k_shot: int,
                      scale: Any = 1.0) -> tuple[Any, Any]:
    """Mean cross-entropy and accuracy of an episode (logits = scale * -distance)."""
    logits = scale * prototypical_logits(support, query, n_way, k_shot)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=query_labels, logits=logits))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32),
                                          query_labels), tf.float32))
    return loss, acc
