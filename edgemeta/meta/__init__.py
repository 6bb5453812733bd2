"""Backbones and meta-learners (host only: needs ``edgemeta[host]``)."""

from edgemeta.meta.backbones import conv4
from edgemeta.meta.evaluate import Accuracy, embed_float, episode_accuracies, summarize
from edgemeta.meta.protonet import make_protonet_step, prototypical_logits, prototypical_loss
from edgemeta.meta.training import (
    TrainConfig,
    TrainResult,
    preprocess_dataset,
    save_training,
    train_protonet,
)

__all__ = [
    "Accuracy",
    "TrainConfig",
    "TrainResult",
    "conv4",
    "embed_float",
    "episode_accuracies",
    "make_protonet_step",
    "preprocess_dataset",
    "prototypical_logits",
    "prototypical_loss",
    "save_training",
    "summarize",
    "train_protonet",
]
