"""Data sources and splits as the trainer sees them (edgemeta.pipeline, no TensorFlow needed)."""

import pytest
from tests.conftest import require_module

require_module("tensorflow")  # edgemeta.pipeline imports the host stack

from edgemeta.errors import DataError  # noqa: E402
from edgemeta.pipeline import DataSplit, split_source  # noqa: E402


def test_holdout_alphabets_with_rotated_training_classes(omniglot_zips):
    source = ",".join(str(p) for p in omniglot_zips)
    train, test = split_source(DataSplit(source, holdout_groups=("Korean", "Balinese"),
                                         rotations=True))
    assert sorted(set(test.class_groups)) == ["Balinese", "Korean"]
    assert test.num_classes == 40 + 24
    assert train.num_classes == (242 - 64) * 4  # rotations only on the training side
    assert not set(train.class_groups) & {"Korean", "Balinese"}


def test_unknown_holdout_group_names_the_choices(omniglot_zips):
    source = ",".join(str(p) for p in omniglot_zips)
    with pytest.raises(DataError, match="Klingon.*Korean"):
        split_source(DataSplit(source, holdout_groups=("Klingon",)))
