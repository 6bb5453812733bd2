"""--data sources as a user types them (edgemeta.pipeline.load_source / DataSplit)."""

import zipfile

import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.data import make_glyph_dataset  # noqa: E402
from edgemeta.errors import ConfigError  # noqa: E402
from edgemeta.pipeline import DataSplit, load_source  # noqa: E402


def _omniglot_zip(path, suffix=".zip"):
    import io

    from PIL import Image

    glyphs = make_glyph_dataset(n_classes=3, per_class=2, size=28, seed=1)
    out = path.with_suffix(suffix)
    with zipfile.ZipFile(out, "w") as zf:
        for i, image in enumerate(glyphs.images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            zf.writestr(f"set/Alpha/char{i // 2}/{i % 2}.png", buf.getvalue())
    return out


def test_stray_comma_does_not_add_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    z = _omniglot_zip(tmp_path / "a")
    assert load_source(f"{z},").num_classes == 3
    assert load_source(f"{z}, {z}").num_classes == 3  # duplicates dedup by alphabet


def test_test_fraction_is_checked_where_it_is_given():
    with pytest.raises(ConfigError, match="test_fraction"):
        DataSplit("synthetic:10", test_fraction=1.5)
    DataSplit("synthetic:10", test_fraction=1.5, holdout_groups=("x",))  # unused with holdout
