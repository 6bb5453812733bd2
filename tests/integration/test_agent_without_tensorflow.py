"""The device agent as a board runs it: its own process, TensorFlow blocked, real mosquitto."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tests.conftest import require_module

require_module("tensorflow")  # only to build the tiny bundle in this (host) process

from edgemeta.fleet import FleetMonitor  # noqa: E402
from edgemeta.bundle import init_home  # noqa: E402
from firmware_bridge import flash  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402

AGENT = """
import sys
sys.modules["tensorflow"] = None   # the board has no TensorFlow
from edgemeta.cli import main
sys.argv = ["edgemeta"] + sys.argv[1:]
try:
    main()
finally:
    assert not any(m.startswith(("tensorflow", "keras")) for m in sys.modules
                   if sys.modules[m] is not None), "TensorFlow was imported"
"""


def test_agent_reports_over_mqtt_without_tensorflow(tmp_path, mosquitto_broker):
    home = tmp_path / "board"
    init_home(home, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{home}")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for i in range(2):
            img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            (home / "inbox" / "enroll" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(home / "inbox" / "enroll" / label / f"{i}.png")
            (home / "inbox" / "classify" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(home / "inbox" / "classify" / label / f"{i}.png")
    with FleetMonitor(mosquitto_broker.url) as monitor:
        r = subprocess.run(
            [sys.executable, "-c", AGENT, "device", "run", "--home", str(home), "--id", "pi-notf",
             "--broker", mosquitto_broker.url, "--once"],
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ai_edge_litert" in r.stdout
        assert monitor.wait_until(lambda st: any(
            s.device_id == "pi-notf" and s.inference_count == 4 and s.state == "offline"
            and s.death_reason == "graceful" for s in st), 10.0), monitor.snapshot()
        (state,) = monitor.snapshot()
        assert state.n_classes == 2 and state.evaluated == 4 and state.model_version == "1.0.0"
