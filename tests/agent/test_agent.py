"""The device agent without a broker: inbox → enroll → classify → results, state kept."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")  # to build the tiny bundle

from edgemeta.agent import DeviceAgent  # noqa: E402
from edgemeta.data import make_glyph_dataset  # noqa: E402
from firmware_bridge import flash  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def home(tmp_path):
    flash(tiny_bundle_path(), f"dir:{tmp_path}")
    data = make_glyph_dataset(n_classes=3, per_class=6, seed=123)
    by_class = data.indices_by_class()
    for c in range(3):
        for j, i in enumerate(by_class[c][:3]):
            _png(tmp_path / "inbox" / "enroll" / f"g{c}" / f"{j}.png", data.images[i])
        for j, i in enumerate(by_class[c][3:]):
            _png(tmp_path / "inbox" / "classify" / f"g{c}" / f"{j}.png", data.images[i])
    _png(tmp_path / "inbox" / "classify" / "unlabelled.png", data.images[0])
    (tmp_path / "inbox" / "classify" / "broken.png").write_text("not an image")
    return tmp_path


def test_agent_processes_inbox_and_keeps_state(home):
    agent = DeviceAgent(home, "dev-1")
    report = agent.process_inbox()
    assert report.enrolled == {"g0": 3, "g1": 3, "g2": 3}
    assert report.classified == 10 and report.failed == 1
    records = [json.loads(line) for line in (home / "outbox" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 11
    broken = [r for r in records if "error" in r]
    assert len(broken) == 1 and "not a readable image" in broken[0]["error"]
    labelled = [r for r in records if "expected" in r]
    assert len(labelled) == 9 and agent.accuracy.evaluated == 9
    assert agent.accuracy.accuracy == pytest.approx(
        np.mean([r["label"] == r["expected"] for r in labelled]))
    status = agent.status()
    assert status.inference_count == 10 and status.latency_p50_ms > 0
    # Nothing left to do; nothing the user gave was deleted.
    assert not list((home / "inbox" / "enroll").rglob("*.png"))
    assert len(list((home / "inbox" / "done").rglob("*.png"))) == 9 + 10 + 1
    # A restart (new process, same home) remembers what was enrolled.
    again = DeviceAgent(home, "dev-1")
    assert again.classifier.labels == ["g0", "g1", "g2"]
    assert again.process_inbox().classified == 0


def test_agent_without_model_is_a_clear_error(tmp_path):
    from edgemeta.errors import BundleError

    with pytest.raises(BundleError, match="no installed model"):
        DeviceAgent(tmp_path, "dev-1")
