"""Remote commands over a real mosquitto: FleetCommander on the host, DeviceAgent on the board.

Uses the shipped int8 model (no TensorFlow). Every wait is bounded; timeouts are ceilings for
slow CI, not performance claims.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from PIL import Image

from edgemeta.agent import DeviceAgent
from edgemeta.bundle import init_home, pack_bundle, read_bundle
from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import Birth, Reply, decode, parse_topic, topic
from edgemeta.fleet.commander import FleetCommander, encode_images
from firmware_bridge import install_bundle

pytestmark = pytest.mark.integration

MODEL = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
WAIT_S = 20.0


def bar(vertical: bool) -> np.ndarray:
    img = np.full((28, 28), 255, np.uint8)
    if vertical:
        img[5:20, 10:14] = 0
    else:
        img[12:16, 3:25] = 0
    return img


def png_file(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


class Listener:
    """A raw paho subscriber that records every message on one topic filter."""

    def __init__(self, url: str, pattern: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe(pattern, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10), "listener could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout_s: float = WAIT_S):
        """The first recorded message (topic, payload) matching ``predicate``, or None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for m in self.messages:
                    if predicate(*m):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(0.2, remaining))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def board(tmp_path, mosquitto_broker) -> Iterator[DeviceAgent]:
    """An agent with versions 5.0.0 then 5.0.1 installed, running against mosquitto."""
    real = read_bundle(MODEL)
    home = tmp_path / "board"
    init_home(home, allow_unsigned=True)
    for v in ("5.0.0", "5.0.1"):
        install_bundle(pack_bundle(dataclasses.replace(real.manifest, version=v), real.model,
                                   tmp_path / f"{v}.edgemeta"), home)
    agent = DeviceAgent(home, "pi-a", broker_url=mosquitto_broker.url, fleet="lab",
                        interval_s=60, ota=False)
    runner = threading.Thread(target=agent.run, kwargs={"poll_s": 0.1, "duration_s": 120},
                              daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not (agent.reporter is not None and agent.reporter.connected) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.reporter is not None and agent.reporter.connected, "agent did not connect"
        yield agent
    finally:
        agent.stop()
        runner.join(15)
    assert not runner.is_alive()


def state_bytes(agent: DeviceAgent) -> bytes | None:
    path = agent.home.prototypes_path(agent.classifier.manifest.model_sha256)
    return path.read_bytes() if path.exists() else None


def test_enroll_classify_forget_report_rebirth_rollback_over_mqtt(board, mosquitto_broker,
                                                                  tmp_path):
    url = mosquitto_broker.url
    v, h = png_file(tmp_path / "v.png", bar(True)), png_file(tmp_path / "h.png", bar(False))
    births = Listener(url, topic("lab", "pi-a", "birth"))
    try:
        with FleetCommander(url, host_id="test-host") as cmd:
            r = cmd.call("lab", "pi-a", "enroll", {"label": "vertical",
                                                   "images": encode_images([v, v])}, WAIT_S)
            assert isinstance(r, Reply) and (r.fleet, r.device_id) == ("lab", "pi-a")
            assert r.ok and r.result == {"label": "vertical", "count": 2, "n_classes": 1}, r
            r = cmd.call("lab", "pi-a", "enroll", {"label": "horizontal",
                                                   "images": encode_images([h])}, WAIT_S)
            assert r.ok and r.result["n_classes"] == 2, r
            r = cmd.call("lab", "pi-a", "classify", {"images": encode_images([h, v])}, WAIT_S)
            assert r.ok, r
            assert [p["label"] for p in r.result["predictions"]] == ["horizontal", "vertical"]
            assert r.result["model_version"] == "5.0.1"

            # An invalid command: answered with an error, nothing changed.
            before = state_bytes(board)
            r = cmd.call("lab", "pi-a", "enroll", {"label": "broken", "images": [
                base64.b64encode(b"not an image").decode()]}, WAIT_S)
            assert not r.ok and r.result is None
            assert "images[0] is not a readable image" in r.error, r
            assert state_bytes(board) == before
            assert board.classifier.labels == ["vertical", "horizontal"]

            r = cmd.call("lab", "pi-a", "forget", {"label": "vertical"}, WAIT_S)
            assert r.ok and r.result == {"label": "vertical", "n_classes": 1}, r
            assert board.classifier.labels == ["horizontal"]

            r = cmd.call("lab", "pi-a", "report", {}, WAIT_S)
            assert r.ok, r

            n_births = len(births.messages)
            r = cmd.call("lab", "pi-a", "rebirth", {}, WAIT_S)
            assert r.ok, r
            assert births.wait_for(lambda *_: len(births.messages) > n_births) is not None

            n_births = len(births.messages)
            r = cmd.call("lab", "pi-a", "rollback", {}, WAIT_S)
            assert r.ok and (r.result["version"], r.result["previous"]) == ("5.0.0", "5.0.1"), r
            assert board.classifier.manifest.version == "5.0.0"
            assert board.home.current_version() == "5.0.0"
            # The fleet is told which model runs now.
            got = births.wait_for(lambda t, p: decode("birth", p).model_version == "5.0.0")
            assert got is not None and len(births.messages) > n_births
            # Same model bytes: the class learned under 5.0.1 answers under 5.0.0 as well.
            r = cmd.call("lab", "pi-a", "classify", {"images": encode_images([h])}, WAIT_S)
            assert r.ok and r.result["predictions"][0]["label"] == "horizontal", r
    finally:
        births.stop()


def test_cli_fleet_cmd(board, mosquitto_broker, tmp_path):
    v = png_file(tmp_path / "v.png", bar(True))
    base = ["fleet", "cmd", "--broker", mosquitto_broker.url, "--fleet", "lab", "--device",
            "pi-a", "--timeout", str(WAIT_S)]
    from edgemeta.cli import cli

    r = CliRunner().invoke(cli, base + ["enroll", "vertical", str(v)])
    assert r.exit_code == 0, r.output
    assert "enroll ok" in r.output and '"count": 1' in r.output
    r = CliRunner().invoke(cli, base + ["classify", str(v)])
    assert r.exit_code == 0 and r.output.startswith(f"{v}: vertical ("), r.output
    r = CliRunner().invoke(cli, base + ["--json", "forget", "nope"])
    assert r.exit_code == 1, r.output
    reply = json.loads(r.output)
    assert reply["ok"] is False and "'nope' is not enrolled" in reply["error"]
    r = CliRunner().invoke(cli, base[:-4] + ["--device", "nobody", "--timeout", "1", "report"])
    assert r.exit_code == 1 and "no reply from lab/nobody to report" in r.output, r.output


# --- the commander alone, against a scripted device ------------------------------------------------


class ScriptedDevice:
    """Answers commands on one device's topic with whatever ``answer(cmd)`` returns."""

    def __init__(self, url: str, fleet: str, device: str, answer) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.fleet, self.device, self.answer = fleet, device, answer
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe(topic(fleet, device, "cmd"), qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10)

    def reply(self, reply_id: str, ok: bool = True, result: dict | None = None,
              fleet: str | None = None, device: str | None = None) -> None:
        fleet, device = fleet or self.fleet, device or self.device
        msg = Reply(reply_id, device, fleet, session=1, seq=1, ts=time.time(), ok=ok,
                    result=result, error=None if ok else "refused")
        self.client.publish(topic(fleet, device, "reply"), msg.to_payload(), qos=1)

    def _on_message(self, client, userdata, message) -> None:
        parse_topic(message.topic)
        cmd = decode("cmd", message.payload)
        # Off paho's thread, like the reporter does, so a slow answer cannot block the loop.
        threading.Thread(target=self.answer, args=(self, cmd), daemon=True).start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_commander_correlates_concurrent_calls_and_ignores_impostors(mosquitto_broker):
    def answer(dev: ScriptedDevice, cmd) -> None:
        # An impostor answers first with the same id from another device; then the real reply.
        dev.reply(cmd.id, result={"from": "impostor"}, device="pi-x")
        time.sleep(0.05 * (3 - int(cmd.args["n"]) % 3))  # replies arrive out of order
        dev.reply(cmd.id, result={"n": cmd.args["n"], "host": cmd.host_id})

    dev = ScriptedDevice(mosquitto_broker.url, "lab", "pi-b", answer)
    try:
        with FleetCommander(mosquitto_broker.url, host_id="h1") as cmd:
            results: dict[int, dict] = {}

            def one(n: int) -> None:
                results[n] = cmd.call("lab", "pi-b", "report", {"n": n}, WAIT_S).result

            threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT_S + 5)
            assert results == {n: {"n": n, "host": "h1"} for n in range(6)}
            assert cmd.ignored >= 6  # every impostor reply was seen and dropped
    finally:
        dev.stop()


def test_commander_times_out_clearly_and_routes_invalid_replies(mosquitto_broker):
    def answer(dev: ScriptedDevice, cmd) -> None:
        if cmd.command == "rebirth":
            dev.reply("invalid", ok=False)  # what a device says when it cannot parse a command

    dev = ScriptedDevice(mosquitto_broker.url, "lab", "pi-c", answer)
    try:
        with FleetCommander(mosquitto_broker.url) as cmd:
            with pytest.raises(FleetError, match=r"no reply from lab/pi-c to report \(id \w+\) "
                                                 r"within 0.5 s"):
                cmd.call("lab", "pi-c", "report", {}, timeout_s=0.5)
            r = cmd.call("lab", "pi-c", "rebirth", {}, WAIT_S)
            assert (r.id, r.ok, r.error) == ("invalid", False, "refused")
            with pytest.raises(MessageError, match="expected at most 1048576"):
                cmd.call("lab", "pi-c", "classify", {"images": ["A" * (1024 * 1024)]})
            with pytest.raises(MessageError, match="command"):
                cmd.call("lab", "pi-c", "reboot", {})
        with pytest.raises(FleetError, match="not started"):
            cmd.call("lab", "pi-c", "report")
    finally:
        dev.stop()


def test_commander_drops_malformed_replies():
    commander = FleetCommander("mqtt://127.0.0.1:1")  # never started: handle() needs no broker
    assert commander.handle(topic("lab", "pi", "reply"), b"{not json") is False
    good = Reply("abc", "pi", "lab", 1, 1, 1.0, True).to_payload()
    assert commander.handle(topic("lab", "other", "reply"), good) is False  # names another device
    assert commander.handle(topic("lab", "pi", "reply"), good) is False  # nobody waits for it
    assert commander.ignored == 3
    birth = Birth("pi", "lab", 1, 1.0, None, None, None, None, (), "0.1.0").to_payload()
    assert commander.handle(topic("lab", "pi", "birth"), birth) is False
