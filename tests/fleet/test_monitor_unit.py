"""Monitor state machine fed directly through its message handler: no broker involved."""

from __future__ import annotations

import json
import logging

import pytest
from rich.console import Console

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import (
    Birth,
    Death,
    DeviceState,
    FleetMonitor,
    Telemetry,
    render_table,
    topic,
)
from edgemeta.fleet.monitor import MAX_ERRORS


class FakeClock:
    """Manually advanced unix-seconds clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(clock: FakeClock) -> FleetMonitor:
    # Never started: handle() is exercised directly.
    return FleetMonitor("mqtt://127.0.0.1:1", offline_after_s=30, clock=clock)


def birth(session: int, device: str = "pi-01", fleet: str = "lab", **kw: object) -> Birth:
    fields = dict(device_id=device, fleet=fleet, session=session, ts=1.0, model_version="1.0.0",
                  model_sha256="ab" * 32, backend="ai_edge_litert", board="rpi4",
                  labels=["cat", "dog"], agent_version="0.1.0")
    fields.update(kw)
    return Birth(**fields)  # type: ignore[arg-type]


def telemetry(session: int, seq: int, device: str = "pi-01", **kw: object) -> Telemetry:
    fields = dict(device_id=device, fleet="lab", session=session, seq=seq, ts=2.0, uptime_s=5.0,
                  model_version="1.0.0", model_sha256="ab" * 32, labels=["cat", "dog", "cow"],
                  n_classes=3, inference_count=10 + seq, latency_p50_ms=0.7, latency_p95_ms=1.1,
                  rss_bytes=40_000_000, accuracy=0.8, evaluated=5, boot=1, n=seq)
    fields.update(kw)
    return Telemetry(**fields)  # type: ignore[arg-type]


def feed(m: FleetMonitor, msg: Birth | Telemetry | Death) -> None:
    m.handle(topic(msg.fleet, msg.device_id, msg.KIND), msg.to_payload())


def only(m: FleetMonitor) -> DeviceState:
    states = m.snapshot()
    assert len(states) == 1, states
    return states[0]


def test_birth_makes_device_online_with_model_info(monitor: FleetMonitor) -> None:
    feed(monitor, birth(100))
    st = only(monitor)
    assert (st.fleet, st.device_id, st.state) == ("lab", "pi-01", "online")
    assert st.model_version == "1.0.0" and st.backend == "ai_edge_litert" and st.board == "rpi4"
    assert st.labels == ("cat", "dog") and st.n_classes == 2
    assert st.last_seq is None and st.inference_count is None
    assert st.session == 100


def test_telemetry_updates_metrics(monitor: FleetMonitor) -> None:
    feed(monitor, birth(100))
    feed(monitor, telemetry(100, 0))
    feed(monitor, telemetry(100, 1))
    st = only(monitor)
    assert st.last_seq == 1 and st.inference_count == 11 and st.n_classes == 3
    assert st.accuracy == 0.8 and st.evaluated == 5 and st.rss_bytes == 40_000_000
    assert st.latency_p50_ms == 0.7 and st.latency_p95_ms == 1.1 and st.uptime_s == 5.0


def test_redelivered_older_telemetry_does_not_go_backwards(monitor: FleetMonitor) -> None:
    feed(monitor, telemetry(100, 5))
    feed(monitor, telemetry(100, 4))
    assert only(monitor).last_seq == 5


def test_graceful_death_of_current_session_goes_offline(monitor: FleetMonitor) -> None:
    feed(monitor, birth(100))
    feed(monitor, Death("pi-01", "lab", 100, 3.0, "graceful"))
    st = only(monitor)
    assert st.state == "offline" and st.death_reason == "graceful"
    assert st.model_version == "1.0.0"  # last known model stays visible


def test_stale_retained_death_does_not_kill_new_birth(monitor: FleetMonitor) -> None:
    # Order a monitor sees on subscribe: the old process's retained Last Will, the new birth.
    feed(monitor, Death("pi-01", "lab", 100, None, "lost"))
    assert only(monitor).state == "offline"
    feed(monitor, birth(200))
    st = only(monitor)
    assert st.state == "online" and st.death_reason is None and st.session == 200


def test_stale_death_arriving_after_new_birth_is_ignored(monitor: FleetMonitor) -> None:
    feed(monitor, birth(200))
    feed(monitor, Death("pi-01", "lab", 100, None, "lost"))
    assert only(monitor).state == "online"


def test_retained_birth_and_death_of_same_session_in_any_order(clock: FakeClock) -> None:
    for order in ("birth-first", "death-first"):
        m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock)
        msgs: list = [birth(100), Death("pi-01", "lab", 100, None, "lost")]
        for msg in msgs if order == "birth-first" else msgs[::-1]:
            feed(m, msg)
        st = only(m)
        assert st.state == "offline" and st.death_reason == "lost", order


def test_new_session_drops_old_metrics_and_ignores_late_old_messages(
    monitor: FleetMonitor,
) -> None:
    feed(monitor, birth(100))
    feed(monitor, telemetry(100, 7))
    feed(monitor, birth(200, model_version="2.0.0"))
    st = only(monitor)
    assert st.model_version == "2.0.0" and st.last_seq is None
    feed(monitor, telemetry(100, 8))  # late message of the previous process
    assert only(monitor).last_seq is None
    feed(monitor, telemetry(200, 0, model_version="2.0.0"))
    assert only(monitor).last_seq == 0


def test_offline_by_silence(monitor: FleetMonitor, clock: FakeClock) -> None:
    feed(monitor, birth(100))
    clock.now += 29.0
    assert only(monitor).state == "online"
    clock.now += 2.0
    st = only(monitor)
    assert st.state == "offline" and st.death_reason is None
    feed(monitor, telemetry(100, 0))
    assert only(monitor).state == "online"


def test_wait_until_sees_silence_without_messages(clock: FakeClock) -> None:
    m = FleetMonitor("mqtt://127.0.0.1:1", offline_after_s=5, clock=clock)
    feed(m, birth(100))
    assert not m.wait_until(lambda s: s[0].state == "offline", timeout_s=0.2)
    clock.now += 6
    assert m.wait_until(lambda s: s[0].state == "offline", timeout_s=1.0)


@pytest.mark.parametrize(
    ("topic_", "payload", "needle"),
    [
        ("edgemeta/v1/lab/pi-01/birth", b"{oops", "not JSON"),
        ("edgemeta/v1/lab/pi-01/birth", b'{"schema": 9}', "unsupported schema version 9"),
        ("edgemeta/v1/lab/pi 01/birth", b"{}", "invalid device id"),
        ("edgemeta/v1/lab/pi-01/telemetry", json.dumps({"schema": 2}).encode(),
         "missing field 'device_id'"),
    ],
)
def test_malformed_message_is_counted_not_raised(
    monitor: FleetMonitor, caplog: pytest.LogCaptureFixture, topic_: str, payload: bytes,
    needle: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgemeta.fleet.monitor"):
        monitor.handle(topic_, payload)
    assert monitor.error_count == 1
    (err_topic, err_msg), = monitor.errors
    assert err_topic == topic_ and needle in err_msg
    assert needle in caplog.text
    assert monitor.snapshot() == []
    # ...and the monitor keeps working afterwards.
    feed(monitor, birth(1))
    assert only(monitor).state == "online"


def test_payload_that_disagrees_with_topic_is_an_error(monitor: FleetMonitor) -> None:
    monitor.handle("edgemeta/v1/lab/pi-02/birth", birth(1, device="pi-01").to_payload())
    assert monitor.error_count == 1
    assert "expected the payload's fleet and device_id to match" in monitor.errors[0][1]
    assert monitor.snapshot() == []


def test_error_list_is_bounded(monitor: FleetMonitor) -> None:
    for i in range(MAX_ERRORS + 25):
        monitor.handle(f"edgemeta/v1/lab/d{i}/birth", b"junk")
    assert monitor.error_count == MAX_ERRORS + 25
    errors = monitor.errors
    assert len(errors) == MAX_ERRORS
    assert errors[-1][0] == f"edgemeta/v1/lab/d{MAX_ERRORS + 24}/birth"


def test_snapshot_is_sorted_and_status_dict_is_json(monitor: FleetMonitor) -> None:
    feed(monitor, birth(1, device="b-dev"))
    feed(monitor, birth(1, device="a-dev", fleet="zoo"))
    feed(monitor, birth(1, device="a-dev"))
    monitor.handle("edgemeta/v1/lab/x/death", b"[]")
    assert [(s.fleet, s.device_id) for s in monitor.snapshot()] == [
        ("lab", "a-dev"), ("lab", "b-dev"), ("zoo", "a-dev")]
    status = json.loads(json.dumps(monitor.status_dict()))
    assert status["errors"] == 1
    assert status["stats"]["messages"] == 4 and status["stats"]["errors"] == 1
    assert status["stats"]["devices"] == 3 and status["alerts"] == []
    assert status["host_id"] == monitor.host_id
    assert [d["device_id"] for d in status["devices"]] == ["a-dev", "b-dev", "a-dev"]
    assert status["devices"][0]["labels"] == ["cat", "dog"]


def test_device_lookup(monitor: FleetMonitor) -> None:
    feed(monitor, birth(1, device="pi-07"))
    found = monitor.device("pi-07")
    assert found is not None and found.device_id == "pi-07"
    assert monitor.device("pi-07", fleet="other") is None


def test_render_table_has_columns_and_rows(monitor: FleetMonitor, clock: FakeClock) -> None:
    feed(monitor, birth(1))
    feed(monitor, telemetry(1, 1))  # seq 0 was the birth's
    feed(monitor, birth(1, device="pi-02"))
    feed(monitor, Death("pi-02", "lab", 1, 2.0, "lost"))
    states = monitor.snapshot()
    table = render_table(states, now=clock.now + 4, alerts=monitor.alerts(states))
    assert [c.header for c in table.columns] == [
        "device", "fleet", "state", "seen", "model", "classes", "inf/s", "p50/p95 ms",
        "accuracy", "alerts"]
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "pi-01" in text and "online" in text and "80.0%/5" in text and "4s ago" in text
    assert "0.70/1.10" in text  # p50/p95
    assert "2 devices, 1 online, 1 alerts" in text  # pi-02's offline alert
    row = next(line for line in text.splitlines() if "pi-02" in line)
    assert " lost " in row  # the state says why it is offline
    assert row.rstrip().endswith(" offline")  # the alerts column names the kind


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(FleetError, match="unsupported broker URL 'http://x'"):
        FleetMonitor("http://x")
    with pytest.raises(MessageError, match="invalid fleet 'a/b'"):
        FleetMonitor("mqtt://127.0.0.1:1883", fleet_pattern="a/b")
    with pytest.raises(FleetError, match="offline_after_s must be a positive number"):
        FleetMonitor("mqtt://127.0.0.1:1883", offline_after_s=0)


def test_ignores_kinds_it_does_not_track(monitor: FleetMonitor, monkeypatch) -> None:
    # Later protocol kinds (cmd/reply/ota) share the namespace; the monitor must not count them
    # as errors once the schema knows them.
    from edgemeta.fleet import schema

    monkeypatch.setitem(schema.MESSAGE_TYPES, "cmd", Birth)
    monitor.handle("edgemeta/v1/lab/pi-01/cmd", b"anything")
    assert monitor.error_count == 0 and monitor.snapshot() == []


def test_watch_is_bounded_by_duration(monitor: FleetMonitor) -> None:
    import io

    from edgemeta.fleet import watch

    feed(monitor, birth(1, device="pi-watch"))
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False, color_system=None)
    watch(monitor, console, refresh_s=0.05, duration_s=0.2)
    assert "pi-watch" in out.getvalue()
    with pytest.raises(FleetError, match="refresh_s must be a positive number"):
        watch(monitor, console, refresh_s=0, duration_s=0.1)
