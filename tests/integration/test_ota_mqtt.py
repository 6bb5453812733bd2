"""Over-the-air flashing through a real mosquitto: one device, resume, fleet roll-out, CLI."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.bundle import BoardHome, init_home, pack_bundle
from edgemeta.cli import cli
from edgemeta.errors import InstallError
from edgemeta.fleet import FleetMonitor
from firmware_bridge import install_bundle
from firmware_bridge.ota import BoardOta, MqttTransport, OtaEngine, home_birth
from firmware_bridge.ota.rollout import rollout
from tests.firmware_bridge.conftest import fake_model, make_manifest

NO_HEALTH = {"health_check": False}  # fake model bytes: no interpreter can load them


def bundle(tmp_path: Path, version: str, size: int = 4096, seed: int = 1) -> Path:
    model = fake_model(seed, size)
    return pack_bundle(make_manifest(model, version), model,
                       tmp_path / "bundles" / f"m-{version}-{seed}.edgemeta")


def board_home(tmp_path: Path, name: str, v1: Path, *, allow_unsigned: bool = True) -> Path:
    home = tmp_path / name
    init_home(home, allow_unsigned=True)
    install_bundle(v1, home, health_check=False)
    if not allow_unsigned:  # a board that refuses unsigned bundles from now on
        init_home(home, allow_unsigned=False)
    return home


def start_board(url: str, home: Path, device: str, fleet: str = "site-a", **kw) -> BoardOta:
    board = BoardOta(url, home, device, fleet, install_options=NO_HEALTH,
                     birth=lambda: home_birth(home, device, fleet), **kw)
    board.start()
    return board


def test_push_to_one_device(tmp_path, mosquitto_broker):
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", size=150_000, seed=2)
    home = board_home(tmp_path, "pi-1", v1)
    board = start_board(mosquitto_broker.url, home, "pi-1")
    try:
        transport = MqttTransport(mosquitto_broker.url, device="pi-1", fleet="site-a",
                                  timeout_s=20)
        result = transport.push(v2)
        assert (result.version, result.previous_version, result.changed) == ("2.0.0", "1.0.0", True)
        assert BoardHome.at(home).current_version() == "2.0.0"
        t = transport.last_transfer
        assert t.chunks_sent == 3 and t.offer.chunks == 3  # 150 KB in 64 KiB chunks, none resent
        # The board's next birth reports the new version.
        with FleetMonitor(mosquitto_broker.url, "site-a") as monitor:
            assert monitor.wait_until(lambda st: any(
                s.device_id == "pi-1" and s.model_version == "2.0.0" for s in st), 5)
        # Pushing again is a no-op the board answers without a transfer.
        again = transport.push(v2)
        assert not again.changed and transport.last_transfer.chunks_sent == 0
    finally:
        board.stop()


def test_board_refusal_reaches_the_host_with_its_reason(tmp_path, mosquitto_broker):
    v1 = bundle(tmp_path, "2.0.0")
    home = board_home(tmp_path, "pi-1", v1)
    board = start_board(mosquitto_broker.url, home, "pi-1")
    try:
        with pytest.raises(InstallError, match="2.0.0 stays current") as info:
            MqttTransport(f"{mosquitto_broker.url}/site-a/pi-1", timeout_s=20).push(
                bundle(tmp_path, "1.5.0", seed=3))
        assert info.value.reason == "downgrade"
    finally:
        board.stop()


def test_downgrade_over_the_air_needs_the_boards_consent(tmp_path, mosquitto_broker):
    v2 = bundle(tmp_path, "2.0.0")
    home = board_home(tmp_path, "pi-1", v2)
    board = start_board(mosquitto_broker.url, home, "pi-1")
    transport = MqttTransport(f"{mosquitto_broker.url}/site-a/pi-1", timeout_s=20)
    try:
        with pytest.raises(InstallError, match="refuses downgrades requested over the air") as info:
            transport.push(bundle(tmp_path, "1.5.0", seed=3), allow_downgrade=True)
        assert info.value.reason == "downgrade"
        assert BoardHome.at(home).current_version() == "2.0.0"
        init_home(home, allow_ota_downgrade=True)
        assert transport.push(bundle(tmp_path, "1.5.0", seed=3), allow_downgrade=True).changed
        assert BoardHome.at(home).current_version() == "1.5.0"
    finally:
        board.stop()


def test_a_lying_board_cannot_stop_the_engine(tmp_path, mosquitto_broker):
    """A status asking for chunks the offer lacks is ignored; paho's thread keeps running."""
    import json

    from edgemeta.fleet import _mqtt
    from firmware_bridge.ota.protocol import MAX_CHUNKS, ota_topic

    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", size=20_000, seed=2)
    home = board_home(tmp_path, "pi-1", v1)
    liar = _mqtt.new_client("liar")
    liar.connect("127.0.0.1", int(mosquitto_broker.url.rsplit(":", 1)[1]))
    liar.loop_start()
    try:
        with OtaEngine(mosquitto_broker.url, offer_retry_s=0.3, answer_timeout_s=15) as engine:
            t = engine.send("site-a", "pi-1", v2.read_bytes(), timeout_s=20)
            for need, chunks in (([[0, MAX_CHUNKS]], MAX_CHUNKS), ([[5, 6]], 6)):
                lie = {"schema": 1, "transfer_id": t.offer.transfer_id, "fleet": "site-a",
                       "device": "pi-1", "state": "need", "need": need, "received": 0,
                       "chunks": chunks, "version": None, "current_version": None,
                       "previous_version": None, "changed": False, "reason": None,
                       "message": None, "rejected": 0, "path": None}
                liar.publish(ota_topic("site-a", "pi-1", "status"), json.dumps(lie), qos=1
                             ).wait_for_publish(5)
            deadline = time.monotonic() + 5
            while engine.invalid < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.invalid == 2 and t.chunks_sent == 0
            with start_board(mosquitto_broker.url, home, "pi-1"):  # the real board appears
                assert engine.wait([t], 20) and t.ok, t.message
    finally:
        liar.loop_stop()
        liar.disconnect()
    assert BoardHome.at(home).current_version() == "2.0.0"


def test_offline_device_fails_fast_with_a_clear_reason(tmp_path, mosquitto_broker):
    # Gives up after answer_timeout_s (not the transfer's 300 s timeout_s) with reason "offline".
    with pytest.raises(InstallError, match="no answer") as info:
        MqttTransport(mosquitto_broker.url, device="ghost", answer_timeout_s=1.0).push(
            bundle(tmp_path, "1.0.0"))
    assert info.value.reason == "offline"


def test_interrupted_transfer_resumes_without_resending(tmp_path, mosquitto_broker):
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", size=160_000, seed=2)
    home = board_home(tmp_path, "pi-1", v1)
    board = start_board(mosquitto_broker.url, home, "pi-1", tick_s=None)
    kept = 0
    handle = board.receiver.handle

    def link_drops_after_20_chunks(topic: str, payload: bytes) -> None:
        nonlocal kept
        if topic.endswith("/chunk"):
            if kept >= 20:
                return
            kept += 1
        handle(topic, payload)

    board.receiver.handle = link_drops_after_20_chunks
    chunk = 4096  # the smallest chunks an offer may use: 40 of them
    total = -(-v2.stat().st_size // chunk)
    with OtaEngine(mosquitto_broker.url, stall_s=0.5, max_stalls=0) as engine:
        t = engine.send("site-a", "pi-1", v2.read_bytes(), chunk_bytes=chunk, timeout_s=10)
        assert engine.wait([t], 10)
        assert t.reason == "timeout" and t.received == 16  # acknowledged before the cut
    board.stop()
    assert BoardHome.at(home).current_version() == "1.0.0"
    board = start_board(mosquitto_broker.url, home, "pi-1")  # the board restarts
    try:
        with OtaEngine(mosquitto_broker.url) as engine:
            t = engine.send("site-a", "pi-1", v2.read_bytes(), chunk_bytes=chunk, timeout_s=10)
            assert engine.wait([t], 10) and t.ok, t.message
        assert t.chunks_sent == total - 20  # only what the board did not hold
        assert BoardHome.at(home).current_version() == "2.0.0"
    finally:
        board.stop()


def test_rollout_canary_then_rest_stops_after_max_failures_and_continues(tmp_path,
                                                                          mosquitto_broker):
    url = mosquitto_broker.url
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", seed=2)
    names = [f"pi-{i}" for i in range(6)]
    refusing = {"pi-1", "pi-2"}  # they refuse unsigned bundles
    homes = {n: board_home(tmp_path, n, v1, allow_unsigned=n not in refusing) for n in names}
    other = board_home(tmp_path, "other", v1)
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(start_board(url, homes[n], n))
        stack.enter_context(start_board(url, other, "pi-9", fleet="site-b"))
        report = rollout(v2, url, "site-a/*", canary="20%", max_failures=1, parallel=1,
                         timeout_s=10, discover_s=3)
        states = {d.device: (d.phase, d.state, d.reason) for d in report.devices}
        assert states["pi-0"] == ("canary", "installed", None)
        assert states["pi-1"][:2] == ("canary", "failed") and states["pi-1"][2] == "unsigned"
        assert states["pi-2"] == ("rest", "failed", "unsigned")
        assert report.stopped and report.failed == 2 and "max-failures" in report.summary()
        assert [states[n][1] for n in ("pi-3", "pi-4", "pi-5")] == ["not-started"] * 3
        assert "pi-9" not in states  # another fleet
        assert BoardHome.at(other).current_version() == "1.0.0"
        # Fix the refusing boards, run again: it continues where it stopped.
        for n in refusing:
            init_home(homes[n], allow_unsigned=True)
        again = rollout(v2, url, "site-a/*", canary="20%", max_failures=1, timeout_s=10,
                        discover_s=3)
        states = {d.device: d.state for d in again.devices}
        assert states == {"pi-0": "up-to-date", **{n: "installed" for n in names[1:]}}
        assert again.ok and again.installed == 5
    assert all(BoardHome.at(h).current_version() == "2.0.0" for h in homes.values())


def test_cli_flash_over_mqtt(tmp_path, mosquitto_broker):
    url = mosquitto_broker.url
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", seed=2)
    homes = {n: board_home(tmp_path, n, v1) for n in ("pi-0", "pi-1")}
    runner = CliRunner()
    with start_board(url, homes["pi-0"], "pi-0"), start_board(url, homes["pi-1"], "pi-1"):
        r = runner.invoke(cli, ["flash", str(v2), "--to", url, "--device", "pi-0",
                                "--fleet-name", "site-a"])
        assert r.exit_code == 0, r.output
        assert "installed 2.0.0 on site-a/pi-0" in r.output
        r = runner.invoke(cli, ["flash", str(v2), "--to", url, "--fleet", "site-a/*",
                                "--canary", "50%", "--max-failures", "0"])
        assert r.exit_code == 0, r.output
        assert "1 installed, 1 already up to date, 0 failed" in r.output
        assert "site-a/pi-1" in r.output and "up-to-date" in r.output  # the status table
    r = runner.invoke(cli, ["flash", str(v2), "--to", url])
    assert r.exit_code != 0 and "--device" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["flash", str(v2), "--to", url, "--device", "gone",
                            "--timeout", "1"])
    assert r.exit_code == 1 and "Error:" in r.output and "offline" in r.output
