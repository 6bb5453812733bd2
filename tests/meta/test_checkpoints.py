"""Resume edge cases: damaged checkpoints, other data, and a log that stays one line per point."""

import json

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.bundle import Preprocessing  # noqa: E402
from edgemeta.data import EpisodeSampler, make_glyph_dataset  # noqa: E402
from edgemeta.errors import ConfigError  # noqa: E402
from edgemeta.meta import TrainConfig, preprocess_dataset, train_meta  # noqa: E402


@pytest.fixture(scope="module")
def glyphs():
    data = make_glyph_dataset(n_classes=12, per_class=4, size=28, seed=5)
    return data, preprocess_dataset(data, Preprocessing())


def _config(**kw):
    return TrainConfig(**{**dict(n_way=3, k_shot=1, n_query=1, episodes=6, filters=4,
                                 val_every=1), **kw})


def test_log_after_resume_has_each_point_once(glyphs, tmp_path, monkeypatch):
    """Stopped in episode 4 with a checkpoint at 2 and points logged up to 3."""
    data, x = glyphs
    real_sample, calls = EpisodeSampler.sample, []

    def dying_sample(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_sample(self)

    monkeypatch.setattr(EpisodeSampler, "sample", dying_sample)
    log = tmp_path / "log.jsonl"
    with pytest.raises(KeyboardInterrupt):
        train_meta(x, data, _config(checkpoint_every=2), progress=False, checkpoint_dir=tmp_path,
                   log_path=log)
    assert [json.loads(line)["episode"] for line in log.read_text().splitlines()] == [1, 2, 3]
    monkeypatch.setattr(EpisodeSampler, "sample", real_sample)
    result = train_meta(x, data, _config(checkpoint_every=2), progress=False,
                        checkpoint_dir=tmp_path, log_path=log, resume=True)
    logged = [json.loads(line)["episode"] for line in log.read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]
    assert [p["episode"] for p in result.history] == logged


def test_resume_on_other_training_data_is_refused(glyphs, tmp_path):
    data, x = glyphs
    train_meta(x, data, _config(episodes=1), progress=False, checkpoint_dir=tmp_path)
    fewer = data.subset_classes(range(10))
    with pytest.raises(ConfigError, match="other training data"):
        train_meta(preprocess_dataset(fewer, Preprocessing()), fewer, _config(), progress=False,
                   checkpoint_dir=tmp_path, resume=True)
    inverted = 1.0 - x  # same classes, other preprocessing
    with pytest.raises(ConfigError, match="other training data"):
        train_meta(inverted, data, _config(), progress=False, checkpoint_dir=tmp_path,
                   resume=True)


@pytest.mark.parametrize("content", [b"", b"not a zip", "no-state", "bad-json", "bad-sampler",
                                     "pickled"])
def test_damaged_checkpoint_is_a_config_error(glyphs, tmp_path, content):
    data, x = glyphs
    path = tmp_path / "checkpoint.npz"
    if content == "no-state":
        np.savez(path, v0=np.zeros(3))
    elif content == "bad-json":
        np.savez(path, state=np.array("{not json"))
    elif content == "pickled":
        np.savez(path, state=np.array([{"a": 1}], dtype=object))
    elif content == "bad-sampler":
        train_meta(x, data, _config(episodes=1), progress=False, checkpoint_dir=tmp_path)
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        state = json.loads(str(arrays["state"]))
        state["sampler"] = {"bit_generator": "nonsense"}
        arrays["state"] = np.array(json.dumps(state))
        np.savez(path, **arrays)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="checkpoint"):
        train_meta(x, data, _config(), progress=False, checkpoint_dir=tmp_path, resume=True)


def test_a_checkpoint_with_wrong_shapes_changes_no_weight(glyphs, tmp_path):
    """Refused before any variable is assigned (the learner is not left half-restored)."""
    from edgemeta.meta.backbones import conv4
    from edgemeta.meta.checkpoint import load_checkpoint
    from edgemeta.meta.learners import make_learner

    data, x = glyphs
    train_meta(x, data, _config(episodes=1), progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    last = max((k for k in arrays if k.startswith("v")), key=lambda k: int(k[1:]))
    arrays[last] = np.zeros((7, 7), arrays[last].dtype)
    np.savez(path, **arrays)
    import keras
    import tensorflow as tf

    model = conv4((28, 28, 1), filters=4)
    learner = make_learner(_config(), model)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(learner.variables)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ConfigError, match="shape"):
        load_checkpoint(path, learner, optimizer, _config(),
                        extra=[tf.random.Generator.from_seed(17).state])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
