"""Edge cases of the host side found in review: clock steps, huge counters, boot eviction,
version ordering and CLI option checks. The monitor is fed through ``handle()``; no broker."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from edgemeta.cli import cli
from edgemeta.fleet import Death, FleetMonitor
from edgemeta.fleet.exporter import FleetCollector
from edgemeta.fleet.tracker import MAX_BOOTS_TRACKED, DeviceState
from edgemeta.fleet.view import sort_states
from tests.fleet.monitor_fakes import Clock, Sent, birth, feed, tele


@pytest.fixture
def monitor(clock: Clock, sent: Sent) -> FleetMonitor:
    return FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, host_id="host-r")


def only(m: FleetMonitor) -> DeviceState:
    (st,) = m.snapshot()
    return st


# --- device clock steps ---------------------------------------------------------------------


def test_device_clock_step_forward_does_not_keep_a_silent_device_online(
        monitor: FleetMonitor, clock: Clock) -> None:
    # A Pi without RTC sends telemetry every 5 s, then NTP steps its clock forward by ~20 days
    # between two messages. The monitor saw 5 s pass; the cadence must stay ~5 s, else the
    # silence limit (3 intervals) grows to weeks and a dead device stays "online".
    feed(monitor, birth())
    for i in range(1, 6):
        feed(monitor, tele(i, ts=1000.0 + 5 * i))
        clock.now += 5
    feed(monitor, tele(6, ts=1000.0 + 30 + 1_700_000.0))
    assert only(monitor).interval_s == pytest.approx(5.0)
    clock.now += 5
    feed(monitor, tele(7, ts=1000.0 + 35 + 1_700_000.0))  # the cadence continues after the step
    assert only(monitor).interval_s == pytest.approx(5.0)
    clock.now += 16  # more than 3 x 5 s of silence
    st = only(monitor)
    assert st.state == "offline"
    assert [a.kind for a in monitor.alerts()] == ["offline"]


def test_device_timestamps_agreeing_with_arrival_still_set_the_cadence(
        monitor: FleetMonitor, clock: Clock) -> None:
    # The guard must not stop a slow device (60 s cadence) from being estimated.
    feed(monitor, birth())
    for i in range(1, 4):
        feed(monitor, tele(i, ts=1000.0 + 60 * i))
        clock.now += 60
    assert only(monitor).interval_s == pytest.approx(60.0)


# --- counters beyond float range ------------------------------------------------------------


def test_huge_counters_are_applied_and_do_not_break_scrape_or_sequence(
        monitor: FleetMonitor, clock: Clock) -> None:
    # The schema allows any non-negative integer; 10**400 does not fit a float. It must not be
    # an "internal error", freeze the metrics, skip the seq check or fail every scrape.
    huge = 10 ** 400
    feed(monitor, birth())
    feed(monitor, tele(1, ts=1001.0, count=1))
    clock.now += 1
    feed(monitor, tele(2, ts=1002.0, count=huge))
    clock.now += 1
    feed(monitor, tele(3, ts=1003.0, count=huge + 5, rss_bytes=huge, n_classes=huge))
    assert monitor.errors == [] and monitor.stats()["gaps"] == 0
    st = only(monitor)
    assert st.inference_count == huge + 5
    assert st.inference_rate == pytest.approx(5.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(monitor))
    text = generate_latest(registry).decode()
    assert 'edgemeta_device_up{device="pi-01",fleet="lab"} 1.0' in text
    json.dumps(monitor.status_dict(), allow_nan=False)


def test_inference_rate_is_never_infinite(monitor: FleetMonitor, clock: Clock) -> None:
    # Two timestamps 5e-324 s apart: count / dt overflows to inf, which `fleet status --json`
    # would print as the non-JSON token Infinity and the exporter as +Inf.
    feed(monitor, birth())
    feed(monitor, tele(1, ts=0.0, count=0))
    feed(monitor, tele(2, ts=5e-324, count=10 ** 17))
    rate = only(monitor).inference_rate
    assert rate is None
    json.dumps(monitor.status_dict(), allow_nan=False)


# --- gap time at a graceful death -----------------------------------------------------------


def test_gap_at_graceful_death_is_timed_when_the_death_arrives(
        monitor: FleetMonitor, clock: Clock) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1, ts=1001.0))
    clock.now += 200
    feed(monitor, Death(device_id="pi-01", fleet="lab", session=100, ts=2.0, reason="graceful",
                        bd_seq=0, seq=9))
    st = only(monitor)
    assert st.gaps == 1 and st.last_gap_at == clock.now
    (gap,) = [a for a in monitor.alerts() if a.kind == "seq-gap"]
    assert "last 0 s ago" in gap.detail


# --- monitor clock stepped back ---------------------------------------------------------------


def test_rebirth_requests_resume_after_the_host_clock_steps_back(
        monitor: FleetMonitor, clock: Clock, sent: Sent) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1, ts=1001.0))
    feed(monitor, tele(5, ts=1005.0))  # gap -> rebirth request
    assert len(sent) == 1
    clock.now -= 3600  # NTP steps the host clock back an hour
    feed(monitor, tele(9, ts=1009.0))  # another gap: must not wait an hour to be asked
    assert len(sent) == 2
    feed(monitor, tele(12, ts=1012.0))  # ... but the rate limit still holds
    assert len(sent) == 2 and monitor.stats()["rebirths_suppressed"] == 1


# --- replay windows of boots with skewed boot timestamps -------------------------------------


def test_live_boot_window_is_not_evicted_by_a_late_replay_when_its_boot_time_is_smallest(
        monitor: FleetMonitor, clock: Clock) -> None:
    # `boot` is the device's clock at process start; without an RTC a later boot can carry a
    # smaller value. Evicting the smallest boot then drops the window of the boot that is live.
    feed(monitor, birth())
    old_boots = [10_000 + i for i in range(MAX_BOOTS_TRACKED - 1)]
    for b in old_boots:  # earlier boots' replays
        feed(monitor, tele(0, ts=1.0, n=0, boot=b, session=1, replayed=True))
    live = 5  # the current boot, clock not yet synchronised
    for i in range(1, 4):
        feed(monitor, tele(i, ts=1000.0 + i, n=i, boot=live))
    feed(monitor, tele(0, ts=1.0, n=0, boot=20_000, session=1, replayed=True))  # another old one
    before = monitor.stats()
    feed(monitor, tele(4, ts=1004.0, n=2, boot=live))  # the same (boot, n) again
    after = monitor.stats()
    assert after["duplicates"] == before["duplicates"] + 1
    assert after["telemetry_unique"] == before["telemetry_unique"]


# --- table order by version -------------------------------------------------------------------


def test_version_sort_is_numeric_per_component() -> None:
    base = DeviceState(fleet="lab", device_id="x", state="online", last_seen=1.0,
                       model_version=None, model_sha256=None, backend=None, board=None,
                       labels=(), n_classes=0, inference_count=None, latency_p50_ms=None,
                       latency_p95_ms=None, accuracy=None, evaluated=None, rss_bytes=None,
                       uptime_s=None, last_seq=None, death_reason=None)
    versions = {"a": "1.10.0", "b": "1.9.0", "c": "1.9.0-rc1", "d": "2.0", "e": None, "f": "v1.2"}
    states = [dataclasses.replace(base, device_id=d, model_version=v) for d, v in versions.items()]
    order = [s.model_version for s in sort_states(states, "version")]
    assert order == ["1.9.0", "1.9.0-rc1", "1.10.0", "2.0", "v1.2", None]


# --- CLI option checks before connecting -----------------------------------------------------


@pytest.mark.parametrize(("command", "args", "option"), [
    ("watch", ["--refresh", "0"], "--refresh"),
    ("watch", ["--limit", "-1"], "--limit"),
    ("status", ["--offline-after", "0"], "--offline-after"),
    ("status", ["--missed-intervals", "-2"], "--missed-intervals"),
    ("exporter", ["--latency-factor", "0", "--port", "0"], "--latency-factor"),
])
def test_cli_rejects_bad_numbers_by_option_name_before_connecting(
        command: str, args: list[str], option: str) -> None:
    r = CliRunner().invoke(cli, ["fleet", command, "--broker", "mqtt://127.0.0.1:1", *args])
    assert r.exit_code == 2, r.output
    assert option in r.output and "cannot reach" not in r.output


# --- device-supplied text on the operator's terminal ------------------------------------------

_HOSTILE = "1.0\x1b]0;owned\x07\x1b[2J\x9b31m\rX"


def _no_injection(out: str) -> None:
    # rich's own styling is CSI "m" sequences; OSC (title), clear-screen, C1 CSI and a bare CR
    # can only come from the device string.
    for bad in ("\x1b]", "\x1b[2J", "\x9b", "\x07", "\r"):
        assert bad not in out, (bad, out)


def test_table_does_not_pass_terminal_escapes_from_devices() -> None:
    import io

    from rich.console import Console

    from edgemeta.fleet.view import render_table

    st = DeviceState(fleet="lab", device_id="x", state="online", last_seen=1.0,
                     model_version=_HOSTILE, model_sha256=None, backend=None, board=None,
                     labels=(), n_classes=0, inference_count=None, latency_p50_ms=None,
                     latency_p95_ms=None, accuracy=None, evaluated=None, rss_bytes=None,
                     uptime_s=None, last_seq=None, death_reason=None)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=300).print(render_table([st], now=2.0))
    out = buf.getvalue()
    _no_injection(out)
    assert "1.0" in out and "owned" in out  # still shown, made harmless


@pytest.mark.parametrize(("ok", "result", "error", "args"), [
    (False, None, _HOSTILE, ["forget", "cat"]),
    (True, {"predictions": [{"label": _HOSTILE, "score": 0.9}]}, None, ["classify"]),
])
def test_fleet_cmd_does_not_pass_terminal_escapes_from_devices(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object, ok: bool, result: object,
        error: str | None, args: list[str]) -> None:
    from pathlib import Path

    import edgemeta.fleet.commander as commander
    from edgemeta.fleet.schema import Reply

    reply = Reply(id="c1", device_id="pi-01", fleet="lab", session=1, seq=1, ts=1.0, ok=ok,
                  result=result, error=error)  # type: ignore[arg-type]

    class FakeCommander:
        def __init__(self, *a: object, **kw: object) -> None:
            pass

        def __enter__(self) -> FakeCommander:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def call(self, *a: object, **kw: object) -> Reply:
            return reply

    monkeypatch.setattr(commander, "FleetCommander", FakeCommander)
    if args[0] == "classify":
        img = Path(str(tmp_path)) / "q.png"
        img.write_bytes(b"\x89PNG\r\n\x1a\n")
        args = ["classify", str(img)]
    r = CliRunner().invoke(cli, ["fleet", "cmd", "--broker", "mqtt://127.0.0.1:1", "--fleet",
                                 "lab", "--device", "pi-01", *args])
    assert r.exit_code == (0 if ok else 1), r.output
    _no_injection(r.output)
    assert "owned" in r.output


# --- malformed floods -------------------------------------------------------------------------


def test_malformed_flood_is_counted_but_logged_at_a_bounded_rate(
        monitor: FleetMonitor, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    # One misconfigured publisher (e.g. an old agent speaking schema 1) at fleet scale must not
    # write a warning per message: in `fleet watch` each one lands on the live table's terminal.
    caplog.set_level("WARNING", logger="edgemeta.fleet.monitor")
    for i in range(1000):
        monitor.handle(f"edgemeta/v1/lab/pi-{i}/telemetry", b'{"schema":1}')
    assert monitor.error_count == 1000 and len(monitor.errors) == 100
    first = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(first) == 1 and "pi-0" in first[0].getMessage()
    clock.now += 61  # a minute later the next one is logged again, with what was left out
    monitor.handle("edgemeta/v1/lab/pi-x/telemetry", b"not json")
    later = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(later) == 2 and "999 more" in later[1] and "pi-x" in later[1]
