"""Roll-out helpers without a broker: canary parsing, patterns, the report and its table."""

from __future__ import annotations

import pytest
from rich.console import Console

from edgemeta.errors import FlashError
from firmware_bridge.ota.rollout import (
    DeviceOutcome, RolloutReport, _normalise_pattern, parse_canary, render_rollout,
)
from firmware_bridge.ota.transport import split_mqtt_url


@pytest.mark.parametrize(("text", "value"), [("10%", 10.0), ("10", 10.0), (" 2.5 % ", 2.5),
                                             (0, 0.0), ("100%", 100.0)])
def test_parse_canary(text, value):
    assert parse_canary(text) == value


@pytest.mark.parametrize("text", ["ten", "-1%", "101%", "nan", ""])
def test_parse_canary_refuses_nonsense(text):
    with pytest.raises(FlashError, match="percentage"):
        parse_canary(text)


def test_patterns():
    assert _normalise_pattern("site-a") == "site-a/*"
    assert _normalise_pattern("site-*/pi-?") == "site-*/pi-?"
    for bad in ("", "a/b/c"):
        with pytest.raises(FlashError, match="FLEET/DEVICE"):
            _normalise_pattern(bad)


def test_report_summary_and_table():
    devices = [DeviceOutcome("s", "a", "canary", "installed", "1.0.0", 2, 2),
               DeviceOutcome("s", "b", "rest", "failed", "1.0.0", reason="disk-full",
                             message="disk full; 1.0.0 stays current"),
               DeviceOutcome("s", "c", "rest", "not-started"),
               DeviceOutcome("s", "d", state="up-to-date")]
    report = RolloutReport("2.0.0", "s/*", devices, stopped=True,
                           stop_reason="1 device(s) failed, more than --max-failures 0")
    text = report.summary()
    assert "4 devices, 1 installed, 1 already up to date, 1 failed, 1 not started" in text
    assert "STOPPED" in text and not report.ok
    console = Console(record=True, width=160)
    console.print(render_rollout(report))
    out = console.export_text()
    assert "s/b" in out and "disk-full: disk full" in out and "2/2" in out
    empty = RolloutReport("2.0.0", "x/*", [], stop_reason="no device matches x/*")
    assert not empty.ok and empty.summary().endswith("no device matches x/*")


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://h", ("mqtt://h", None, None)),
    ("mqtt://h:1884/pi-1", ("mqtt://h:1884", None, "pi-1")),
    ("mqtt://h/site-a/pi-1/", ("mqtt://h", "site-a", "pi-1")),
])
def test_split_mqtt_url(url, expected):
    assert split_mqtt_url(url) == expected


@pytest.mark.parametrize("url", ["ws://h/pi", "mqtt://h/a/b/c", "mqtt:///pi", "mqtt://h/p+1",
                                 "mqtt://h:99999/pi", "mqtt://h/pi?x=1",
                                 "mqtt://h:0/pi"])
def test_split_mqtt_url_refuses(url):
    with pytest.raises(FlashError, match="target|broker URL"):
        split_mqtt_url(url)
