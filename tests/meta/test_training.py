"""The trainer: resume continues exactly, time budgets stop, tf.distribute matches one device."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.bundle import Preprocessing  # noqa: E402
from edgemeta.data import make_glyph_dataset  # noqa: E402
from edgemeta.errors import ConfigError  # noqa: E402
from edgemeta.meta import TrainConfig, preprocess_dataset, train_meta  # noqa: E402


@pytest.fixture(scope="module")
def glyphs():
    data = make_glyph_dataset(n_classes=20, per_class=8, size=28, seed=5)
    return data, preprocess_dataset(data, Preprocessing())


def _config(**kw):
    base = dict(n_way=5, k_shot=1, n_query=2, episodes=6, filters=8, val_every=3, augment=True,
                normalize=True, deterministic=True)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_resume_continues_exactly(glyphs, tmp_path, monkeypatch):
    """Kill a run after its checkpoint at episode 3; resuming it ends where an unbroken run does."""
    from edgemeta.data import EpisodeSampler

    data, x = glyphs
    straight = train_meta(x, data, _config(), progress=False)
    real_sample, calls = EpisodeSampler.sample, []

    def dying_sample(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the process were stopped in episode 4
        return real_sample(self)

    monkeypatch.setattr(EpisodeSampler, "sample", dying_sample)
    with pytest.raises(KeyboardInterrupt):
        train_meta(x, data, _config(checkpoint_every=3), progress=False, checkpoint_dir=tmp_path,
                   log_path=tmp_path / "log.jsonl")
    monkeypatch.setattr(EpisodeSampler, "sample", real_sample)
    resumed = train_meta(x, data, _config(), progress=False, checkpoint_dir=tmp_path,
                         resume=True, log_path=tmp_path / "log.jsonl")
    assert resumed.episodes_done == 6
    for a, b in zip(_weights(straight.model), _weights(resumed.model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    episodes = [json.loads(x)["episode"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert episodes == [3, 6]


def test_resume_refuses_another_configuration(glyphs, tmp_path):
    data, x = glyphs
    train_meta(x, data, _config(episodes=2), progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="n_way"):
        train_meta(x, data, _config(n_way=4), progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_meta(x, data, _config(), progress=False, checkpoint_dir=tmp_path / "empty",
                   resume=True)


def test_time_budget_stops_early(glyphs):
    data, x = glyphs
    r = train_meta(x, data, _config(episodes=10_000, time_budget_s=1.5, augment=False,
                                    deterministic=False), progress=False)
    assert 1 <= r.episodes_done < 10_000 and r.history[-1]["episode"] == r.episodes_done


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="meta_batch"):
        TrainConfig(meta_batch=0)
    with pytest.raises(ConfigError, match="algorithm 'siamese' unknown"):
        TrainConfig(algorithm="siamese")


MIRRORED = """
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import json, numpy as np
from edgemeta.bundle import Preprocessing
from edgemeta.data import make_glyph_dataset
from edgemeta.meta import TrainConfig, preprocess_dataset, train_meta
data = make_glyph_dataset(n_classes=20, per_class=8, size=28, seed=5)
x = preprocess_dataset(data, Preprocessing())
config = TrainConfig(n_way=5, k_shot=1, n_query=2, episodes=3, filters=8, meta_batch=2,
                     deterministic=True, val_every=3)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = train_meta(x, data, config, progress=False)
two = train_meta(x, data, config, progress=False, strategy=strategy)
# Trainable weights must agree; BatchNorm moving statistics are averaged across replicas
# instead of updated task after task, so they agree only roughly.
pairs = list(zip(one.model.trainable_weights, two.model.trainable_weights))
diff = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in pairs)
stats = max(float(np.abs(a.numpy() - b.numpy()).max())
            for a, b in zip(one.model.non_trainable_weights, two.model.non_trainable_weights))
moved = max(float(np.abs(a.numpy()).max()) for _, a in pairs)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "diff": diff, "moved": moved,
                  "stats": stats}))
"""


def test_mirrored_strategy_on_two_cpu_devices_matches_one_device():
    """The same meta-batch split over two replicas gives the same update as on one device."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED)], capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["moved"] > 0
    assert out["diff"] < 1e-4 and out["stats"] < 0.05, out


def test_plot_history_writes_a_png(tmp_path):
    from edgemeta.meta.plot import plot_history

    history = [{"episode": e, "loss": 1.0 / e, "train_acc": 0.5, "val_acc": 0.4} for e in (1, 2, 3)]
    out = plot_history(history, tmp_path / "curves.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
