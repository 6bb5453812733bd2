"""The device agent takes an over-the-air update: real int8 model, real mosquitto, no TensorFlow."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np

from edgemeta.agent import DeviceAgent
from edgemeta.bundle import init_home, pack_bundle, read_bundle
from edgemeta.fleet import FleetMonitor
from firmware_bridge import install_bundle
from firmware_bridge.ota import MqttTransport

MODEL = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"


def test_agent_installs_over_the_air_and_runs_the_new_model(tmp_path, mosquitto_broker):
    real = read_bundle(MODEL)
    v1, v2 = (pack_bundle(dataclasses.replace(real.manifest, version=v), real.model,
                          tmp_path / f"{v}.edgemeta") for v in ("5.0.0", "5.0.1"))
    home = tmp_path / "board"
    init_home(home, allow_unsigned=True)
    install_bundle(v1, home)
    agent = DeviceAgent(home, "pi-a", broker_url=mosquitto_broker.url, fleet="lab",
                        interval_s=60)
    img = np.full((28, 28), 255, np.uint8)
    img[5:20, 10:14] = 0
    agent.classifier.enroll("bar", [img])
    agent.classifier.save()
    runner = threading.Thread(target=agent.run, kwargs=dict(poll_s=0.1, duration_s=30),
                              daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while agent.ota is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.ota is not None, "the agent did not start its OTA receiver"
        result = MqttTransport(mosquitto_broker.url, device="pi-a", fleet="lab",
                               timeout_s=20).push(v2)
        assert (result.version, result.previous_version) == ("5.0.1", "5.0.0")
        assert agent.classifier.manifest.version == "5.0.1"  # reloaded, classes kept
        assert agent.classifier.labels == ["bar"]
        assert agent.classifier.classify([img])[0].label == "bar"
        with FleetMonitor(mosquitto_broker.url, "lab") as monitor:
            assert monitor.wait_until(lambda st: any(
                s.device_id == "pi-a" and s.model_version == "5.0.1" for s in st), 5)
    finally:
        agent.stop()
        runner.join(10)
    assert not runner.is_alive() and agent.ota is None
