"""Backbones and meta-learners (host only: needs ``edgemeta[host]``)."""

from edgemeta.meta.backbones import conv4
from edgemeta.meta.config import ALGORITHMS, UNLIMITED_EPISODES, TrainConfig
from edgemeta.meta.evaluate import Accuracy, embed_float, episode_accuracies, summarize
from edgemeta.meta.learners import MetaLearner, ProtoNetLearner, make_learner, register_learner
from edgemeta.meta.protonet import prototypical_logits, prototypical_loss
from edgemeta.meta.training import (
    TrainResult,
    lr_at,
    make_step,
    preprocess_dataset,
    save_training,
    train_meta,
)

__all__ = [
    "ALGORITHMS",
    "Accuracy",
    "MetaLearner",
    "ProtoNetLearner",
    "TrainConfig",
    "TrainResult",
    "UNLIMITED_EPISODES",
    "conv4",
    "embed_float",
    "episode_accuracies",
    "lr_at",
    "make_learner",
    "make_step",
    "preprocess_dataset",
    "prototypical_logits",
    "prototypical_loss",
    "register_learner",
    "save_training",
    "summarize",
    "train_meta",
]
