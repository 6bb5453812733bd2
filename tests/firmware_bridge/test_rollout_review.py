"""Roll-out logic as a fleet operator uses it, with a scripted engine instead of a broker.

``rollout`` takes its devices from ``discover`` and its transfers from ``OtaEngine``; both are
replaced here so that canary sizing, the failure threshold and the report can be checked exactly
and fast. The wire protocol and the real engine are covered in test_ota_sender.py and
tests/integration/test_ota_mqtt.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from edgemeta.cli import cli
from edgemeta.errors import FlashError
from firmware_bridge.ota import rollout as rollout_mod
from firmware_bridge.ota.protocol import Offer, Status, new_transfer_id
from firmware_bridge.ota.rollout import rollout
from firmware_bridge.ota.sender import Transfer

URL = "mqtt://127.0.0.1:1"


class ScriptedEngine:
    """Stands in for OtaEngine: every transfer ends at once as ``outcomes`` says.

    ``outcomes[device]`` is ``"installed"``, ``"noop"`` (the board already had it: installed,
    ``changed`` false) or a failure reason; devices not listed install.
    """

    outcomes: dict[str, str] = {}
    sent: list[str] = []

    def __init__(self, broker_url: str, **options: object) -> None:
        self.wire_bytes = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def send(self, fleet: str, device: str, data: bytes, *, version: str,
             allow_downgrade: bool = False, timeout_s: float = 300.0) -> Transfer:
        offer = Offer(new_transfer_id(), fleet, device, "ab" * 32, len(data), 4096,
                      -(-len(data) // 4096), version)
        t = Transfer(fleet, device, offer, data, time.monotonic() + timeout_s)
        outcome = self.outcomes.get(device, "installed")
        state = "installed" if outcome in ("installed", "noop") else "failed"
        t.status = Status(offer.transfer_id, fleet, device, state, received=offer.chunks,
                          chunks=offer.chunks, version=version, changed=outcome == "installed",
                          reason=None if state == "installed" else outcome)
        t.state, t.reason = state, t.status.reason
        t.finished_at = time.monotonic()
        t.done.set()
        self.sent.append(device)
        return t

    def wait(self, transfers: object, timeout_s: float | None = None) -> bool:
        return True


def device(name: str, version: str = "1.0.0", state: str = "online", fleet: str = "site-a"):
    return SimpleNamespace(fleet=fleet, device_id=name, model_version=version,
                           model_sha256=None, state=state)


@pytest.fixture
def fleet(monkeypatch):
    """fleet(devices, outcomes) -> ScriptedEngine class; discover returns ``devices``."""

    def _setup(devices, outcomes=None):
        monkeypatch.setattr(rollout_mod, "discover", lambda broker, pattern, wait_s: devices)
        engine = type("Engine", (ScriptedEngine,), {"outcomes": outcomes or {}, "sent": []})
        monkeypatch.setattr(rollout_mod, "OtaEngine", engine)
        return engine

    return _setup


@pytest.fixture
def v2(make_bundle):
    return make_bundle("2.0.0", seed=2)


@pytest.mark.parametrize(("percent", "n", "expected"), [
    ("7%", 100, 7),    # 7 / 100 * 100 is 7.000000000000001 in floats: ceil gave 8
    ("14%", 50, 7),    # 7.000000000000001 too
    ("10%", 5, 1),     # rounded up: at least one device above 0 %
    ("0.5%", 10, 1),
    ("33.3%", 1000, 333),
    ("0%", 5, 0),
    ("100%", 3, 3),
])
def test_canary_size_is_exact(fleet, v2, percent, n, expected):
    fleet([device(f"pi-{i:03d}") for i in range(n)])
    report = rollout(v2, URL, "site-a/*", canary=percent)
    assert sum(d.phase == "canary" for d in report.devices) == expected
    assert report.installed == n and report.ok


def test_canaries_go_first(fleet, v2):
    engine = fleet([device(f"pi-{i}") for i in range(10)])
    report = rollout(v2, URL, "site-a/*", canary="20%", parallel=1)
    canaries = [d.device for d in report.devices if d.phase == "canary"]
    assert canaries == ["pi-0", "pi-1"] and engine.sent[:2] == canaries


@pytest.mark.parametrize(("k", "stopped", "not_started"), [(2, False, 0), (1, True, 2)])
def test_max_failures_is_a_threshold_to_pass(fleet, v2, k, stopped, not_started):
    """Exactly K failures go on to the end; K + 1 stop before the next device."""
    names = [f"pi-{i}" for i in range(6)]
    fleet([device(n) for n in names], {"pi-1": "unsigned", "pi-3": "health-check"})
    report = rollout(v2, URL, "site-a/*", canary="0%", max_failures=k, parallel=1)
    assert report.failed == 2 and report.stopped is stopped and not report.ok
    assert report.count("not-started") == not_started
    assert report.installed == 4 - not_started


def test_no_transfer_starts_once_the_threshold_is_passed_in_parallel(fleet, v2):
    """Transfers in flight finish; none starts after the failures passed --max-failures."""
    names = [f"pi-{i}" for i in range(6)]
    engine = fleet([device(n) for n in names], {n: "io" for n in names[:3]})
    report = rollout(v2, URL, "site-a/*", canary="0%", max_failures=1, parallel=3)
    assert engine.sent == names[:3] and report.failed == 3
    assert report.count("not-started") == 3 and report.stopped


def test_max_failures_zero_stops_after_a_failed_canary(fleet, v2):
    engine = fleet([device(f"pi-{i}") for i in range(10)], {"pi-0": "health-check"})
    report = rollout(v2, URL, "site-a/*", canary="10%", max_failures=0)
    assert engine.sent == ["pi-0"] and report.stopped
    assert report.count("not-started") == 9 and "STOPPED" in report.summary()


def test_more_canaries_than_devices_and_up_to_date_devices(fleet, v2):
    engine = fleet([device("pi-0", "2.0.0"), device("pi-1"), device("pi-2", "2.0.0")])
    report = rollout(v2, URL, "site-a/*", canary="100%")
    assert engine.sent == ["pi-1"] and report.ok
    assert [d.state for d in report.devices] == ["up-to-date", "installed", "up-to-date"]


def test_a_pattern_matching_nothing_fails_clearly(fleet, v2):
    fleet([])
    report = rollout(v2, URL, "site-z/*")
    assert not report.ok and "no device matches site-z/*" in report.summary()


def test_a_board_that_already_had_the_bundle_is_not_counted_as_installed(fleet, v2):
    """Its birth was stale: the board answers installed, changed false, and nothing moved."""
    fleet([device("pi-0"), device("pi-1")], {"pi-1": "noop"})
    report = rollout(v2, URL, "site-a/*", canary="0%")
    assert report.installed == 1 and report.count("up-to-date") == 1
    assert "1 installed, 1 already up to date" in report.summary()


def test_offline_devices_make_the_rollout_incomplete(fleet, v2):
    """A device the fleet reports offline is not updated: the exit status must not say done."""
    engine = fleet([device("pi-0"), device("pi-1", state="offline")])
    report = rollout(v2, URL, "site-a/*")
    assert engine.sent == ["pi-0"] and report.count("offline") == 1
    assert not report.ok
    assert "1 offline" in report.summary() and "again" in report.summary()


@pytest.mark.parametrize("pattern", ["site-a/", "/pi-1", "site a/*", "site-a/pi 1",
                                     "site-a/pi+1", "site#/*"])
def test_bad_fleet_patterns_are_refused_before_connecting(fleet, v2, pattern):
    fleet([device("pi-1")])
    with pytest.raises(FlashError, match="fleet pattern"):
        rollout(v2, URL, pattern)


@pytest.mark.parametrize("url", [f"{URL}/pi-1", f"{URL}/site-a/pi-1"])
def test_a_device_in_the_url_conflicts_with_a_fleet_pattern(fleet, v2, url):
    engine = fleet([device("pi-1"), device("pi-2")])
    with pytest.raises(FlashError, match="--fleet"):
        rollout(v2, url, "site-a/*")
    assert engine.sent == []


# --- the CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["--fleet", "site-a/*", "--fleet-name", "site-b"],      # --fleet-name was silently dropped
    ["--device", "pi-1", "--canary", "50%"],                  # roll-out options, one device
    ["--device", "pi-1", "--max-failures", "3"],
    ["--device", "pi-1", "--parallel", "4"],
    ["--device", "pi-1", "--fleet", "site-a/*"],
])
def test_cli_refuses_options_it_would_ignore(fleet, v2, extra):
    engine = fleet([device("pi-1")])
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", URL, *extra])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and engine.sent == []


def test_cli_rollout_prints_table_and_summary_and_exit_status(fleet, v2):
    fleet([device("pi-0"), device("pi-1"), device("pi-2")], {"pi-1": "disk-full"})
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", URL, "--fleet", "site-a/*",
                                 "--canary", "0%", "--max-failures", "1", "--parallel", "1"])
    assert r.exit_code == 1, r.output
    assert "site-a/pi-1" in r.output and "disk-full" in r.output
    assert "3 devices, 2 installed, 0 already up to date, 1 failed" in r.output
    fleet([device("pi-0", "2.0.0"), device("pi-1"), device("pi-2", "2.0.0")])
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", URL, "--fleet", "site-a/*"])
    assert r.exit_code == 0, r.output
    assert "1 installed, 2 already up to date, 0 failed" in r.output


@pytest.mark.parametrize("target", ["--device", "--fleet"])
def test_cli_port_zero_is_a_clear_error_not_a_traceback(v2, target):
    """paho's connect() raised a bare ValueError for port 0 that the parser had let through."""
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", "mqtt://127.0.0.1:0", target,
                                 "site-a/*" if target == "--fleet" else "pi-1"])
    assert r.exit_code == 1 and not isinstance(r.exception, ValueError), r.output
    assert r.output.startswith("Error: target 'mqtt://127.0.0.1:0'") and "port 0" in r.output
    assert "1 to 65535" in r.output


def test_cli_names_the_ignored_option_in_good_english(v2):
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", URL, "--device", "pi-1",
                                 "--canary", "5%"])
    assert r.exit_code == 2 and "--canary applies only to a roll-out" in r.output
    r = CliRunner().invoke(cli, ["flash", str(v2), "--to", URL, "--device", "pi-1",
                                 "--canary", "5%", "--parallel", "2"])
    assert "--canary, --parallel apply only to a roll-out" in r.output
