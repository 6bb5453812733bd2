"""Sorting and filtering of the fleet table, and CLI argument checks that need no broker."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from rich.console import Console

from edgemeta.cli import cli
from edgemeta.errors import FleetError
from edgemeta.fleet.tracker import DeviceState
from edgemeta.fleet.view import filter_states, render_table, sort_states

NOW = 1_700_000_000.0
BASE = DeviceState(fleet="lab", device_id="x", state="online", last_seen=NOW, model_version="1.0",
                   model_sha256=None, backend=None, board=None, labels=(), n_classes=0,
                   inference_count=None, latency_p50_ms=None, latency_p95_ms=None, accuracy=None,
                   evaluated=None, rss_bytes=None, uptime_s=None, last_seq=None,
                   death_reason=None)


def st(device: str, fleet: str = "lab", **kw: object) -> DeviceState:
    return dataclasses.replace(BASE, device_id=device, fleet=fleet, **kw)  # type: ignore[arg-type]


STATES = [
    st("a", latency_p50_ms=1.0, last_seen=NOW - 5, model_version="2.0"),
    st("b", state="offline", death_reason="lost", latency_p50_ms=3.0, last_seen=NOW - 50),
    st("c", fleet="other", latency_p50_ms=None, last_seen=None, model_version=None),
    st("d", latency_p50_ms=2.0, last_seen=NOW - 1, model_version="1.5"),
]


@pytest.mark.parametrize(("sort", "order"), [
    ("device", ["a", "b", "d", "c"]),  # by fleet, then device
    ("state", ["b", "a", "d", "c"]),  # offline first
    ("latency", ["b", "d", "a", "c"]),  # slowest first, unknown last
    ("last-seen", ["c", "b", "a", "d"]),  # never seen, then longest silent
    ("version", ["b", "d", "a", "c"]),  # 1.0 (b), 1.5 (d), 2.0 (a), no model (c) last
])
def test_sort_orders(sort: str, order: list[str]) -> None:
    assert [s.device_id for s in sort_states(STATES, sort)] == order


def test_unknown_sort_is_rejected() -> None:
    with pytest.raises(FleetError, match="unknown sort 'speed': expected one of state, device"):
        sort_states(STATES, "speed")


@pytest.mark.parametrize(("pattern", "devices"), [
    (None, ["a", "b", "c", "d"]),
    ("other/*", ["c"]),
    ("lab/*", ["a", "b", "d"]),
    ("[ab]", ["a", "b"]),  # no slash: matched against the device id too
    ("*/d", ["d"]),
    ("nothing", []),
])
def test_filter(pattern: str | None, devices: list[str]) -> None:
    assert [s.device_id for s in filter_states(STATES, pattern)] == devices


def test_render_table_limit_and_filter_caption() -> None:
    table = render_table(STATES, now=NOW, sort="latency", pattern="lab/*", limit=2)
    console = Console(record=True, width=160, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "3 devices, 2 online, 0 alerts; first 2 shown" in text
    rows = [line.split()[0] for line in text.splitlines()
            if line.split() and line.split()[0] in ("a", "b", "d")]
    assert rows == ["b", "d"]


def test_cli_rejects_glob_with_filter_and_glob_for_exporter() -> None:
    r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", "mqtt://127.0.0.1:1",
                                 "--fleet", "site-*", "--filter", "pi-*"])
    assert r.exit_code == 2 and "give --filter or a --fleet pattern, not both" in r.output
    r = CliRunner().invoke(cli, ["fleet", "exporter", "--broker", "mqtt://127.0.0.1:1",
                                 "--fleet", "site-*", "--port", "0"])
    assert r.exit_code == 2 and "use Prometheus label matchers" in r.output
    r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", "mqtt://127.0.0.1:1",
                                 "--sort", "speed"])
    assert r.exit_code == 2 and "'speed' is not one of" in r.output


def test_cli_status_unreachable_broker_is_one_clear_line() -> None:
    from edgemeta.fleet import free_port

    port = free_port()
    r = CliRunner().invoke(cli, ["fleet", "status", "--broker", f"mqtt://127.0.0.1:{port}",
                                 "--json", "--wait", "0"])
    assert r.exit_code == 1 and "cannot reach MQTT broker" in r.output
