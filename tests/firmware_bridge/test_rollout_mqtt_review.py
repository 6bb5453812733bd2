"""Roll-outs through a real mosquitto: a device lost mid-transfer, the re-run, a changed bundle."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from edgemeta.bundle import BoardHome, init_home, pack_bundle
from firmware_bridge import install_bundle
from firmware_bridge.ota import BoardOta, home_birth
from firmware_bridge.ota.rollout import rollout
from tests.firmware_bridge.conftest import fake_model, make_manifest
from tests.integration.conftest import mosquitto_broker  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

# Short stalls so that a lost device fails in about a second, not in a minute.
FAST = {"stall_s": 0.3, "max_stalls": 1, "answer_timeout_s": 3.0}


def bundle(tmp_path: Path, version: str, size: int = 4096, seed: int = 1) -> Path:
    model = fake_model(seed, size)
    return pack_bundle(make_manifest(model, version), model,
                       tmp_path / "bundles" / f"m-{version}-{seed}.edgemeta")


def board_home(tmp_path: Path, name: str, v1: Path) -> Path:
    home = tmp_path / name
    init_home(home, allow_unsigned=True)
    install_bundle(v1, home, health_check=False)
    return home


def start_board(url: str, home: Path, device: str) -> BoardOta:
    board = BoardOta(url, home, device, "site-a", install_options={"health_check": False},
                     birth=lambda: home_birth(home, device, "site-a"))
    board.start()
    return board


def test_a_device_lost_mid_transfer_stops_the_rollout_and_the_rerun_resumes_it(
        tmp_path, mosquitto_broker):  # noqa: F811
    url = mosquitto_broker.url
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", size=400_000, seed=2)
    names = ["pi-0", "pi-1", "pi-2"]
    homes = {n: board_home(tmp_path, n, v1) for n in names}
    with contextlib.ExitStack() as stack:
        boards = {n: stack.enter_context(start_board(url, homes[n], n)) for n in names}
        handle, kept = boards["pi-1"].receiver.handle, []

        def link_drops_after_2_chunks(topic: str, payload: bytes) -> None:
            if topic.endswith("/chunk"):
                if len(kept) >= 2:
                    return
                kept.append(1)
            handle(topic, payload)

        boards["pi-1"].receiver.handle = link_drops_after_2_chunks
        report = rollout(v2, url, "site-a/*", canary="0%", max_failures=0, parallel=1,
                         timeout_s=10, discover_s=1, engine_options=FAST)
        states = {d.device: (d.state, d.reason) for d in report.devices}
        assert states == {"pi-0": ("installed", None), "pi-1": ("failed", "timeout"),
                          "pi-2": ("not-started", None)}
        assert report.stopped and not report.ok
        assert BoardHome.at(homes["pi-1"]).current_version() == "1.0.0"
        assert BoardHome.at(homes["pi-2"]).current_version() == "1.0.0"

        boards["pi-1"].receiver.handle = handle  # the link is back
        again = rollout(v2, url, "site-a/*", canary="0%", max_failures=0, parallel=1,
                        timeout_s=10, discover_s=1, engine_options=FAST)
        states = {d.device: d.state for d in again.devices}
        assert states == {"pi-0": "up-to-date", "pi-1": "installed", "pi-2": "installed"}
        assert again.ok
        resumed = next(d for d in again.devices if d.device == "pi-1").transfer
        chunks = resumed.offer.chunks
        assert chunks == 7 and resumed.chunks_sent == chunks - 2  # the 2 it held are not resent
    assert all(BoardHome.at(h).current_version() == "2.0.0" for h in homes.values())


def test_a_changed_bundle_between_runs(tmp_path, mosquitto_broker):  # noqa: F811
    url = mosquitto_broker.url
    v1, v2 = bundle(tmp_path, "1.0.0"), bundle(tmp_path, "2.0.0", seed=2)
    v2_rebuilt = bundle(tmp_path, "2.0.0", seed=3)  # same version, another model
    homes = {n: board_home(tmp_path, n, v1) for n in ("pi-0", "pi-1")}
    with contextlib.ExitStack() as stack:
        for n, home in homes.items():
            stack.enter_context(start_board(url, home, n))
        first = rollout(v2, url, "site-a/*", max_failures=0, timeout_s=10, discover_s=1)
        assert first.ok and first.installed == 2
        # Not "up to date": the boards run another 2.0.0. They refuse it (versions are
        # immutable), and the first refusal stops the roll-out.
        second = rollout(v2_rebuilt, url, "site-a/*", max_failures=0, parallel=1,
                         timeout_s=10, discover_s=1)
        states = {d.device: (d.state, d.reason) for d in second.devices}
        assert states == {"pi-0": ("failed", "conflict"), "pi-1": ("not-started", None)}
        assert second.stopped and "STOPPED" in second.summary()
        v3 = bundle(tmp_path, "3.0.0", seed=4)
        third = rollout(v3, url, "site-a/*", max_failures=0, timeout_s=10, discover_s=1)
        assert third.ok and third.installed == 2
    assert all(BoardHome.at(h).current_version() == "3.0.0" for h in homes.values())
