"""Alert rules as pure functions over DeviceState lists."""

from __future__ import annotations

import dataclasses

import pytest

from edgemeta.errors import FleetError
from edgemeta.fleet.alerts import Alert, AlertConfig, evaluate, silence_limit
from edgemeta.fleet.tracker import DeviceState

NOW = 1_700_000_000.0


def dev(device: str, fleet: str = "lab", **kw: object) -> DeviceState:
    base: dict[str, object] = {
        "fleet": fleet, "device_id": device, "state": "online", "last_seen": NOW - 1,
        "model_version": "1.0", "model_sha256": None, "backend": None, "board": None,
        "labels": (), "n_classes": 0, "inference_count": 0, "latency_p50_ms": 1.0,
        "latency_p95_ms": 2.0, "accuracy": None, "evaluated": 0, "rss_bytes": 1, "uptime_s": 1.0,
        "last_seq": 1, "death_reason": None, "session": 1, "born": True, "bd_seq": 0,
        "telemetry": 1}
    base.update(kw)
    return DeviceState(**base)  # type: ignore[arg-type]


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.device, a.kind) for a in alerts]


def test_healthy_fleet_has_no_alerts() -> None:
    assert evaluate([dev("a"), dev("b"), dev("c")], NOW) == []


def test_offline_by_death_and_by_silence() -> None:
    alerts = evaluate([dev("a", state="offline", death_reason="lost"),
                       dev("b", state="offline", death_reason="graceful"),
                       dev("c", state="offline", last_seen=NOW - 40, interval_s=5.0)], NOW)
    assert kinds(alerts) == [("a", "offline"), ("b", "offline"), ("c", "offline")]
    assert "Last Will" in alerts[0].detail and "graceful" in alerts[1].detail
    assert alerts[2].detail == "silent for 40 s (limit 15 s)"


def test_silence_limit_uses_interval_then_fallback() -> None:
    cfg = AlertConfig(missed_intervals=4, offline_after_s=30)
    assert silence_limit(cfg, 2.0) == 8.0
    assert silence_limit(cfg, None) == 30.0
    assert silence_limit(AlertConfig(interval_s=10, missed_intervals=2), 1.0) == 20.0  # configured


def test_version_drift_flags_the_minority_of_online_devices() -> None:
    states = [dev("a"), dev("b"), dev("c", model_version="0.9"),
              dev("d", model_version="0.8", state="offline", death_reason="lost"),
              dev("e", fleet="other", model_version="0.7")]
    alerts = [a for a in evaluate(states, NOW) if a.kind == "version-drift"]
    assert kinds(alerts) == [("c", "version-drift")]
    assert alerts[0].detail == "runs 0.9, fleet majority runs 1.0 (2/3: 0.9 x1, 1.0 x2)"


def test_version_drift_without_majority_flags_everyone() -> None:
    alerts = evaluate([dev("a"), dev("b", model_version="2.0")], NOW)
    assert kinds(alerts) == [("a", "version-drift"), ("b", "version-drift")]
    assert "no majority" in alerts[0].detail


def test_latency_regression_against_fleet_median() -> None:
    states = [dev("a", latency_p50_ms=1.0), dev("b", latency_p50_ms=1.2),
              dev("c", latency_p50_ms=2.5), dev("d", latency_p50_ms=None)]
    alerts = evaluate(states, NOW)
    assert kinds(alerts) == [("c", "latency")]
    assert alerts[0].detail == "p50 2.50 ms is 2.1x the fleet median 1.20 ms (limit 2x)"
    assert evaluate(states, NOW, AlertConfig(latency_factor=3)) == []


def test_latency_needs_enough_devices() -> None:
    two = [dev("a", latency_p50_ms=1.0), dev("b", latency_p50_ms=9.0)]
    assert evaluate(two, NOW) == []  # a median of two says nothing
    three = two + [dev("c", latency_p50_ms=1.0)]
    assert kinds(evaluate(three, NOW)) == [("b", "latency")]
    assert evaluate(three, NOW, AlertConfig(min_latency_devices=4)) == []


def test_recent_seq_gap_only() -> None:
    recent = dev("a", gaps=2, missed=5, last_gap_at=NOW - 10)
    old = dev("b", gaps=1, missed=1, last_gap_at=NOW - 400)
    alerts = evaluate([recent, old], NOW)
    assert kinds(alerts) == [("a", "seq-gap")]
    assert alerts[0].detail == "2 sequence gap(s), 5 message(s) missed; last 10 s ago"


def test_never_birthed_needs_telemetry() -> None:
    alerts = evaluate([dev("a", born=False), dev("b", born=False, telemetry=0)], NOW)
    assert kinds(alerts) == [("a", "never-birthed")]


def test_alerts_are_sorted_and_frozen() -> None:
    alerts = evaluate([dev("z", state="offline", death_reason="lost", born=False),
                       dev("a", fleet="b-fleet", gaps=1, missed=1, last_gap_at=NOW)], NOW)
    assert [(a.fleet, a.device, a.kind) for a in alerts] == [
        ("b-fleet", "a", "seq-gap"), ("lab", "z", "offline"), ("lab", "z", "never-birthed")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        alerts[0].kind = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("kw", "needle"), [
    ({"missed_intervals": 0}, "missed_intervals must be a positive number"),
    ({"latency_factor": -1}, "latency_factor must be a positive number"),
    ({"interval_s": 0}, "interval_s must be a positive number or None"),
    ({"min_latency_devices": 1}, "min_latency_devices must be an integer >= 2"),
])
def test_config_is_checked(kw: dict, needle: str) -> None:
    with pytest.raises(FleetError, match=needle):
        AlertConfig(**kw)
