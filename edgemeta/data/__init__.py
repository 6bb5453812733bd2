"""Datasets for few-shot learning: loaders, synthetic glyphs and episode sampling.

Host-side, numpy and Pillow only (no TensorFlow), so it can be imported anywhere.
"""

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.data.episodes import Episode, EpisodeSampler, episode_labels, fit_episode_size
from edgemeta.data.omniglot import (
    IMAGE_SUFFIXES,
    load_dataset_folder,
    load_image_folder,
    load_omniglot,
)
from edgemeta.data.synthetic import make_glyph_dataset, safe_class_dirname, write_image_folder

__all__ = [
    "IMAGE_SUFFIXES",
    "Episode",
    "EpisodeSampler",
    "ImageClassDataset",
    "episode_labels",
    "fit_episode_size",
    "load_dataset_folder",
    "load_image_folder",
    "load_omniglot",
    "make_glyph_dataset",
    "safe_class_dirname",
    "write_image_folder",
]
