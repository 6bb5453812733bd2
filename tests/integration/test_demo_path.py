"""The demo path end to end at tiny scale: real conversion, real LiteRT in agent processes, real
mosquitto, a real monitor. Accuracy is not asserted here (tiny training); the benchmark records it.
"""

import json

import pytest
from tests.conftest import require_module

require_module("tensorflow")

from edgemeta.demo import BOARDS, DemoConfig, run_demo  # noqa: E402
from tests.integration.conftest import require_mosquitto  # noqa: E402


def test_demo_quick_with_mosquitto(tmp_path):
    require_mosquitto()
    result = run_demo(tmp_path / "demo", DemoConfig.quick(), broker_kind="mosquitto")
    assert result.bundle.is_file()
    # Every board reported an accuracy over all its labelled images, and shut down cleanly.
    assert set(result.board_accuracy) == {d for d, _, _ in BOARDS}
    assert all(a is not None and 0.0 <= a <= 1.0 for a in result.board_accuracy.values())
    for device_id, _, _ in BOARDS:
        home = tmp_path / "demo" / "boards" / device_id
        records = [json.loads(x) for x in (home / "outbox" / "results.jsonl").read_text().splitlines()]
        assert len(records) == 5 * DemoConfig.quick().held_back
        assert all(r["model_version"] == "1.0.0" for r in records)
        log = (home / "agent.log").read_text()
        assert "ai_edge_litert" in log and "stopped after" in log
        assert len(list((home / "state").glob("*/prototypes.npz"))) == 1
