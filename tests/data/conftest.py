"""Fixtures of the data tests: the shared Omniglot zips and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgemeta.data import ImageClassDataset, load_omniglot, make_glyph_dataset

REPO = Path(__file__).resolve().parents[2]
OMNIGLOT_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")


@pytest.fixture(scope="session")
def omniglot_zips() -> list[Path]:
    """The two shared Omniglot zips; fail on CI when missing, skip elsewhere."""
    root = Path(
        os.environ.get("EDGEMETA_OMNIGLOT_DIR", REPO.parent / "shared" / "data" / "omniglot")
    )
    paths = [root / name for name in OMNIGLOT_ZIPS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        reason = f"Omniglot zips not found: {missing}; set EDGEMETA_OMNIGLOT_DIR to their folder"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return paths


@pytest.fixture(scope="session")
def omniglot(omniglot_zips: list[Path]) -> ImageClassDataset:
    return load_omniglot(omniglot_zips)


@pytest.fixture(scope="session")
def glyphs() -> ImageClassDataset:
    """A small synthetic dataset shared by the read-only tests."""
    return make_glyph_dataset(n_classes=30, per_class=8, size=28, seed=3)
