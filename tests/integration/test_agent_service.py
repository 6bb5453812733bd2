"""The agent as a service: SIGTERM stops it cleanly, a broker restart needs no manual step, and
the shipped systemd unit's command line is accepted by the real CLI."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from edgemeta.bundle import init_home
from edgemeta.fleet import start_broker, topic_filter
from firmware_bridge import install_bundle
from tests.integration.conftest import require_mosquitto

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "omniglot-protonet.edgemeta"
UNIT = REPO / "deploy" / "systemd" / "edgemeta-agent.service"
WAIT_S = 30.0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "board"
    init_home(h, allow_unsigned=True)
    install_bundle(MODEL, h)
    return h


class Watcher:
    """Collects births and deaths of the fleet ``lab`` on one broker."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: c.subscribe(topic_filter("lab"), qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        # Retries every 0.05 s (the agent backs off from 1 s): a watcher started before its
        # broker is subscribed before the agent reconnects and replays its spool.
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.05)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            with self.lock:
                self.messages.append((msg.topic.rsplit("/", 1)[1], json.loads(msg.payload)))

    def find(self, kind: str, pred=lambda m: True, timeout_s: float = WAIT_S) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for k, m in self.messages:
                    if k == kind and pred(m):
                        return m
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sigterm_after_broker_restart_publishes_graceful_death(home: Path) -> None:
    require_mosquitto()
    broker = start_broker("mosquitto")
    brokers = [broker]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgemeta", "device", "run", "--home", str(home), "--id", "pi-svc",
         "--fleet", "lab", "--broker", broker.url, "--interval", "0.2", "--poll", "0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = Watcher(broker.port)
    try:
        assert watcher.find("birth", lambda m: m["bd_seq"] == 0), "agent never came online"
        # Telemetry only: a birth is retained, so seeing one says nothing about the spool.
        assert watcher.find("telemetry"), "no live telemetry"
        broker.stop()
        watcher.stop()
        # The new watcher first, so it is subscribed (it retries every 0.05 s) before the agent
        # (backing off from 1 s) reconnects and replays: replayed telemetry is not retained.
        watcher = Watcher(broker.port)
        broker = start_broker("mosquitto", port=broker.port)
        brokers.append(broker)
        assert watcher.subscribed.wait(WAIT_S), "watcher could not subscribe"
        # No manual step: the agent's next connection publishes birth bd_seq 1 on the new broker
        # and replays what it spooled meanwhile.
        birth = watcher.find("birth", lambda m: m["bd_seq"] == 1)
        assert birth is not None, watcher.messages
        assert watcher.find("telemetry", lambda m: m["replayed"]), "nothing replayed"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, out
        death = watcher.find("death", lambda m: m["reason"] == "graceful")
        assert death is not None, watcher.messages
        assert death["session"] == birth["session"] and death["bd_seq"] == 1
        assert isinstance(death["seq"], int) and 1 <= death["seq"] <= 255
        assert "pi-svc: stopped after" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watcher.stop()
        for b in brokers:
            b.stop()
    log_text = (home / "agent.log").read_text()
    assert "lost its broker connection" in log_text  # the rotating log got the agent's story
    assert (home / "spool" / "state.json").is_file()


def test_wait_for_monitor_holds_the_birth_until_a_monitor_is_online(home: Path) -> None:
    """`device run --wait-for-monitor`: connected, but no birth or telemetry until a retained
    host state says a monitor is online; then the birth and telemetry follow by themselves."""
    from edgemeta.fleet import HostState, host_topic

    require_mosquitto()
    broker = start_broker("mosquitto")
    watcher = Watcher(broker.port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgemeta", "device", "run", "--home", str(home), "--id", "pi-wait",
         "--fleet", "lab", "--broker", broker.url, "--interval", "0.2", "--poll", "0.1",
         "--wait-for-monitor"],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        assert watcher.subscribed.wait(WAIT_S), "watcher could not subscribe"
        deadline = time.monotonic() + WAIT_S
        log_file = home / "agent.log"
        while time.monotonic() < deadline and proc.poll() is None and not (
                log_file.is_file() and "the birth waits for a monitor" in log_file.read_text()):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        assert "the birth waits for a monitor" in log_file.read_text()
        # Connected, and five telemetry periods later still silent.
        time.sleep(1.0)
        with watcher.lock:
            assert not [k for k, _ in watcher.messages if k in ("birth", "telemetry")], \
                watcher.messages
        watcher.client.publish(host_topic("ops"), HostState("ops", True, time.time()).to_payload(),
                               qos=1, retain=True)
        birth = watcher.find("birth")
        assert birth is not None and birth["device_id"] == "pi-wait", watcher.messages
        assert watcher.find("telemetry"), "no telemetry after the monitor came online"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watcher.stop()
        broker.stop()


def test_wait_for_monitor_needs_a_broker(home: Path) -> None:
    from edgemeta.cli import cli

    result = CliRunner().invoke(cli, ["device", "run", "--home", str(home), "--id", "pi",
                                      "--wait-for-monitor", "--once", "--log-file", "-"])
    assert result.exit_code == 2 and "--wait-for-monitor" in result.output and "--broker" in \
        result.output


def test_agent_log_is_rotated_and_bounded(tmp_path: Path) -> None:
    import logging

    from edgemeta.agent.agent import configure_logging

    path = tmp_path / "agent.log"
    handler = configure_logging(path, max_bytes=2048, backups=2)
    try:
        log = logging.getLogger("edgemeta.test.rotation")
        for i in range(400):
            log.warning("line %d %s", i, "x" * 40)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all((tmp_path / f).stat().st_size <= 2048 + 200 for f in files)
    assert "line 399" in path.read_text()


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    return parser["Service"]


def test_systemd_unit_settings() -> None:
    svc = unit_service_section()
    assert svc["Type"] == "simple" and svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM" and int(svc["TimeoutStopSec"]) >= 10
    assert svc["User"] not in ("", "root") and svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    argv = shlex.split(svc["ExecStart"])
    home = argv[argv.index("--home") + 1]
    assert svc["ReadWritePaths"] == home == svc["WorkingDirectory"]
    assert argv[0].endswith("/.venv/bin/edgemeta") and argv[1:3] == ["device", "run"]


def test_systemd_unit_waits_for_the_clock_and_ships_a_tls_url(tmp_path: Path) -> None:
    from edgemeta.fleet._broker_url import parse_broker_url

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    unit = parser["Unit"]
    assert "time-sync.target" in unit["Wants"].split()  # After= alone pulls nothing in
    assert "time-sync.target" in unit["After"].split()
    svc = parser["Service"]
    name, source = svc["LoadCredential"].split(":", 1)
    argv = shlex.split(svc["ExecStart"])
    url = argv[argv.index("--broker") + 1]
    assert url.startswith("mqtts://%H@") and f"password_file=%d/{name}" in url
    # The URL the service gets, with systemd's specifiers and the files filled in, is accepted.
    (tmp_path / name).write_text("pw\n")
    (tmp_path / "ca.pem").write_text("x")
    real = url.replace("%H", "pi-01").replace("%d", str(tmp_path)).replace(
        "/etc/edgemeta/ca.pem", str(tmp_path / "ca.pem"))
    addr = parse_broker_url(real)
    assert addr.tls and addr.username == "pi-01" and addr.password == "pw" and addr.port == 8883
    assert source.startswith("/etc/")


def test_systemd_exec_start_runs_with_the_real_cli(home: Path, mosquitto_broker) -> None:
    """The unit's exact options, with only paths/host/broker substituted, run one pass."""
    from edgemeta.cli import cli

    argv = shlex.split(unit_service_section()["ExecStart"])[1:]
    values = {"--home": str(home), "--id": "pi-unit", "--broker": mosquitto_broker.url,
              "--log-file": str(home / "agent.log")}
    for i, arg in enumerate(argv[:-1]):
        if arg in values:
            argv[i + 1] = values[arg]
    assert "%H" not in argv
    # The command installs signal handlers and a log handler in this process: put them back.
    import logging

    root = logging.getLogger()
    saved = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
             list(root.handlers), root.level, [h.level for h in root.handlers])
    try:
        result = CliRunner().invoke(cli, argv + ["--once"], catch_exceptions=False)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
        for h in root.handlers[:]:
            if h not in saved[2]:
                root.removeHandler(h)
                h.close()
        root.setLevel(saved[3])
        for h, level in zip(saved[2], saved[4]):
            h.setLevel(level)
    assert result.exit_code == 0, result.output
    assert (home / "agent.log").is_file()
    assert "pi-unit: stopped after 0 classifications" in result.output
