"""The meta-learner interface and the prototypical-network learner.

A learner owns the meta-parameters (the backbone that ships, plus anything used only in
training, such as a MAML head or a temperature) and turns one task into gradients for them.
The trainer (``edgemeta.meta.training``) averages those over a meta-batch, across replicas of a
``tf.distribute`` strategy, and applies them. Reptile returns its meta-update direction
``theta - phi`` in place of a gradient, so the same optimiser step applies to every algorithm.
"""

from __future__ import annotations

from typing import Any

from edgemeta._deps import require
from edgemeta.meta.config import TrainConfig
from edgemeta.meta.protonet import prototypical_loss

__all__ = ["MetaLearner", "ProtoNetLearner", "make_learner", "register_learner"]

tf = require("tensorflow", "meta-learning")
keras = require("keras", "meta-learning")

_REGISTRY: dict[str, type["MetaLearner"]] = {}


def register_learner(*names: str):
    """Class decorator: make a learner available as ``TrainConfig.algorithm`` in ``names``."""
    def wrap(cls: type["MetaLearner"]) -> type["MetaLearner"]:
        for name in names:
            _REGISTRY[name] = cls
        return cls
    return wrap


class MetaLearner:
    """Base class. Subclasses implement :meth:`task_grads`.

    Attributes:
        backbone: The embedding network (``keras.Model``) that is exported to the board.
        config: The run's configuration.
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.extra_variables: list[Any] = []

    @property
    def variables(self) -> list[Any]:
        """Meta-parameters, in the order :meth:`task_grads` returns gradients."""
        return list(self.backbone.trainable_variables) + list(self.extra_variables)

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        """Gradients (or update directions) for one task, its query loss and query accuracy.

        Args:
            sx: Support images (n_way * k_shot, H, W, C), class-major.
            sy: Support labels (n_way * k_shot,) int32 in 0..n_way-1.
            qx: Query images (n_way * n_query, H, W, C).
            qy: Query labels (n_way * n_query,) int32.
        """
        raise NotImplementedError


@register_learner("protonet")
class ProtoNetLearner(MetaLearner):
    """Prototypical networks; with ``normalize`` a learned temperature scales the distances."""

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        if config.normalize:
            # Unit vectors have squared distances in [0, 4]: a temperature restores the softmax
            # range (initial value as in Oreshkin et al., TADAM); the board needs only argmin.
            self.log_scale = keras.Variable(2.3, name="log_scale", dtype="float32")
            self.extra_variables.append(self.log_scale)

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        n_way, k_shot = self.config.n_way, self.config.k_shot
        n_support = n_way * k_shot
        with tf.GradientTape() as tape:
            emb = self.backbone(tf.concat([sx, qx], axis=0), training=True)
            if self.config.normalize:
                emb = tf.math.l2_normalize(emb, axis=1)
            scale = tf.exp(self.log_scale) if self.config.normalize else 1.0
            loss, acc = prototypical_loss(emb[:n_support], emb[n_support:], qy, n_way, k_shot,
                                          scale=scale)
        return tape.gradient(loss, self.variables), loss, acc


def make_learner(config: TrainConfig, backbone: Any) -> MetaLearner:
    """The learner for ``config.algorithm`` around ``backbone``."""
    if config.algorithm not in _REGISTRY:
        import edgemeta.meta.maml  # noqa: F401 - registers the MAML family and Reptile
    return _REGISTRY[config.algorithm](backbone, config)
