"""Sparkplug sequence checks, replay de-duplication, rebirth requests and host state: no broker.

The monitor is fed through ``handle()``; its command publishing is replaced by a list.
"""

from __future__ import annotations

import json

import pytest

from edgemeta.fleet import Command, Death, FleetMonitor, Reply, topic
from edgemeta.fleet.tracker import MAX_BOOTS_TRACKED, REPLAY_WINDOW, SeenWindow
from tests.fleet.monitor_fakes import Clock, Sent, birth, feed, tele


@pytest.fixture
def monitor(clock: Clock, sent: Sent) -> FleetMonitor:
    return FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, host_id="host-a")


def test_seq_wraps_without_a_gap(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, birth())
    seqs = list(range(1, 256)) + [0, 1, 2]  # ... 254, 255, 0, 1, 2
    for i, s in enumerate(seqs):
        feed(monitor, tele(s, n=i))
    stats = monitor.stats()
    assert stats["gaps"] == 0 and stats["missed"] == 0 and stats["telemetry_unique"] == len(seqs)
    assert sent == []
    assert monitor.device("pi-01").last_seq == 2  # type: ignore[union-attr]


def test_gap_is_counted_and_rebirth_requested(monitor: FleetMonitor, sent: Sent,
                                              clock: Clock) -> None:
    feed(monitor, birth())
    for s in (1, 2, 3):
        feed(monitor, tele(s))
    feed(monitor, tele(5))  # 4 is missing
    stats = monitor.stats()
    assert (stats["gaps"], stats["missed"], stats["rebirths_requested"]) == (1, 1, 1)
    ((cmd_topic, cmd),) = sent
    assert cmd_topic == "edgemeta/v1/lab/pi-01/cmd"
    assert isinstance(cmd, Command) and cmd.command == "rebirth" and cmd.host_id == "host-a"
    assert "expected seq 4, got 5" in cmd.args["reason"]
    st = monitor.device("pi-01")
    assert st is not None and (st.gaps, st.missed, st.last_gap_at) == (1, 1, clock.now)
    feed(monitor, tele(6))  # continues from 5: no second gap
    assert monitor.stats()["gaps"] == 1


def test_gap_across_the_wrap(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    for i, s in enumerate(range(1, 255)):
        feed(monitor, tele(s, n=i))
    feed(monitor, tele(2, n=300))  # expected 255: 255, 0, 1 are missing
    assert (monitor.stats()["gaps"], monitor.stats()["missed"]) == (1, 3)


def test_rebirth_requests_are_rate_limited_per_device(monitor: FleetMonitor, sent: Sent,
                                                      clock: Clock) -> None:
    feed(monitor, birth())
    feed(monitor, birth(device="pi-02"))
    feed(monitor, tele(3))
    feed(monitor, tele(9, n=9))
    feed(monitor, tele(5, device="pi-02"))  # another device is not held back
    assert [t for t, _ in sent] == ["edgemeta/v1/lab/pi-01/cmd", "edgemeta/v1/lab/pi-02/cmd"]
    assert monitor.stats()["rebirths_suppressed"] == 1
    clock.now += 11
    feed(monitor, tele(20, n=20))
    assert len(sent) == 3
    ids = [c.id for _, c in sent]
    assert len(set(ids)) == 3  # every command has its own correlation id


def test_new_birth_restarts_the_sequence(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1))
    feed(monitor, tele(2))
    feed(monitor, birth())  # rebirth (same session): seq restarts at 0
    feed(monitor, tele(1, n=3))
    assert monitor.stats()["gaps"] == 0 and sent == []


def test_redelivered_older_seq_is_not_a_gap(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    for s in (1, 2, 3):
        feed(monitor, tele(s))
    feed(monitor, tele(2))  # QoS 1 redelivery
    stats = monitor.stats()
    assert stats["gaps"] == 0 and stats["duplicates"] == 1 and stats["telemetry_unique"] == 3
    assert monitor.device("pi-01").last_seq == 3  # type: ignore[union-attr]


def test_replies_and_graceful_death_take_part_in_the_sequence(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1))
    feed(monitor, Reply(id="c1", device_id="pi-01", fleet="lab", session=100, seq=2, ts=1.0,
                        ok=True))
    feed(monitor, tele(3))
    feed(monitor, Death("pi-01", "lab", 100, 2.0, "graceful", bd_seq=0, seq=5))  # 4 missing
    stats = monitor.stats()
    assert (stats["gaps"], stats["missed"]) == (1, 1)
    assert stats["rebirths_requested"] == 0  # a leaving device is not asked to re-birth
    assert monitor.device("pi-01").state == "offline"  # type: ignore[union-attr]


def test_telemetry_without_birth_asks_for_one(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, tele(17))
    st = monitor.device("pi-01")
    assert st is not None and not st.born and st.state == "online"
    ((_, cmd),) = sent
    assert cmd.args["reason"] == "never born"
    assert [a.kind for a in monitor.alerts()] == ["never-birthed"]
    assert monitor.stats()["gaps"] == 0  # no birth, no expectation, no gap
    feed(monitor, birth())
    feed(monitor, tele(1, n=18))
    assert monitor.device("pi-01").born  # type: ignore[union-attr]
    assert monitor.alerts() == []


def test_new_session_without_birth_asks_for_one(monitor: FleetMonitor, sent: Sent,
                                                clock: Clock) -> None:
    feed(monitor, birth(session=100))
    feed(monitor, tele(1))
    clock.now += 20
    feed(monitor, tele(4, session=200))  # reconnected; this monitor missed the new birth
    ((_, cmd),) = sent
    assert cmd.args["reason"] == "no birth for session 200"
    assert monitor.stats()["gaps"] == 0  # a new connection is not a gap of the old one


def test_death_with_other_bd_seq_is_not_trusted(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, birth(bd_seq=4))
    feed(monitor, Death("pi-01", "lab", 100, None, "lost", bd_seq=3))
    assert monitor.device("pi-01").state == "online"  # type: ignore[union-attr]
    ((_, cmd),) = sent
    assert "bd_seq 3 does not match birth bd_seq 4" in cmd.args["reason"]
    feed(monitor, Death("pi-01", "lab", 100, None, "lost", bd_seq=4))
    st = monitor.device("pi-01")
    assert st is not None and st.state == "offline" and st.death_reason == "lost"


def test_replayed_telemetry_is_counted_once(monitor: FleetMonitor) -> None:
    feed(monitor, birth(session=100))
    for n in range(3):
        feed(monitor, tele(n + 1, n=n))
    # Reconnect as session 200: the spool replays n=2 (its PUBACK was lost) and n=3, 4 (never
    # delivered), then live telemetry goes on.
    feed(monitor, birth(session=200, bd_seq=1))
    for i, n in enumerate((2, 3, 4)):
        feed(monitor, tele(i + 1, n=n, session=200, replayed=True))
    feed(monitor, tele(4, n=5, session=200))
    stats = monitor.stats()
    assert stats["telemetry"] == 7 and stats["telemetry_unique"] == 6 and stats["duplicates"] == 1
    assert stats["gaps"] == 0
    st = monitor.device("pi-01")
    assert st is not None and st.duplicates == 1 and st.telemetry == 7


def test_late_message_of_old_session_is_still_deduplicated(monitor: FleetMonitor) -> None:
    feed(monitor, birth(session=100))
    feed(monitor, tele(1, n=0))
    feed(monitor, birth(session=200, bd_seq=1))
    feed(monitor, tele(2, n=1, session=100))  # arrives late, after the new birth
    feed(monitor, tele(2, n=1, session=100))  # ... twice
    stats = monitor.stats()
    assert stats["late"] == 2 and stats["telemetry_unique"] == 2 and stats["duplicates"] == 1
    assert monitor.device("pi-01").last_seq is None  # type: ignore[union-attr]


def test_new_boot_numbers_are_separate(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1, n=0, boot=1))
    feed(monitor, birth(session=300, bd_seq=0))
    feed(monitor, tele(1, n=0, boot=2, session=300))  # a restarted process counts from 0 again
    assert monitor.stats()["telemetry_unique"] == 2 and monitor.stats()["duplicates"] == 0


def test_seen_window_bounds() -> None:
    w = SeenWindow()
    assert w.add(10) == "new" and w.add(10) == "duplicate"
    assert w.add(3) == "new" and w.add(3) == "duplicate"  # older than the first, in the window
    assert w.add(10 + REPLAY_WINDOW + 5) == "new"  # jumps far ahead: the old bits fall out
    assert w.add(10) == "unverifiable"
    assert w.add(10 + REPLAY_WINDOW + 4) == "new"
    assert w.mask.bit_length() <= REPLAY_WINDOW


def test_boots_remembered_per_device_are_bounded(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    for boot in range(1, MAX_BOOTS_TRACKED + 3):
        feed(monitor, tele(boot, n=0, boot=boot))
    dev = monitor._tracker.devices[("lab", "pi-01")]
    assert len(dev.seen) == MAX_BOOTS_TRACKED and 1 not in dev.seen


def test_cadence_and_inference_rate_come_from_device_timestamps(monitor: FleetMonitor,
                                                                clock: Clock) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1, n=0, ts=1000.0, count=100))
    feed(monitor, tele(2, n=1, ts=1002.0, count=150))  # arrives at the same monitor time
    st = monitor.device("pi-01")
    assert st is not None and st.interval_s == 2.0 and st.inference_rate == 25.0
    # Silence is judged against 3 intervals (6 s), not offline_after_s (30 s).
    clock.now += 5
    assert monitor.device("pi-01").state == "online"  # type: ignore[union-attr]
    clock.now += 2
    st = monitor.device("pi-01")
    assert st is not None and st.state == "offline" and st.death_reason is None
    assert [a.kind for a in monitor.alerts()] == ["offline"]
    assert "silent for 7 s (limit 6 s)" in monitor.alerts()[0].detail


def test_share_group_turns_gap_detection_off(clock: Clock, sent: Sent) -> None:
    m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, share_group="mon")
    assert not m.detect_gaps
    assert m.subscriptions() == ["edgemeta/v1/+/+/birth", "edgemeta/v1/+/+/death",
                                 "$share/mon/edgemeta/v1/+/+/telemetry",
                                 "$share/mon/edgemeta/v1/+/+/reply"]
    feed(m, birth())
    feed(m, tele(1))
    feed(m, tele(7))  # the other monitor of the group got 2..6
    assert m.stats()["gaps"] == 0 and sent == []
    forced = FleetMonitor("mqtt://127.0.0.1:1", fleet_pattern="lab", share_group="mon",
                          detect_gaps=True)
    assert forced.detect_gaps and forced.subscriptions()[0] == "edgemeta/v1/lab/+/birth"


def test_share_group_member_judges_liveness_by_deaths_not_silence(clock: Clock,
                                                                   sent: Sent) -> None:
    """A monitor of a share group receives only its share of each device's telemetry: a long
    run that went to the other monitors must not flap the device offline; its death does."""
    m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, share_group="mon")
    feed(m, birth())
    feed(m, tele(1, ts=1000.0))
    feed(m, tele(2, ts=1002.0))  # cadence 2 s: the silence limit alone would be 6 s
    clock.now += 120  # 60 intervals, every message went to another monitor of the group
    st = m.device("pi-01")
    assert st is not None and st.state == "online" and m.alerts() == []
    feed(m, Death("pi-01", "lab", 100, None, "lost", bd_seq=0))
    st = m.device("pi-01")
    assert st is not None and st.state == "offline" and [a.kind for a in m.alerts()] == ["offline"]
    # A member that sees every message of a device (routing by topic) keeps the silence rule.
    routed = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, share_group="mon",
                          detect_gaps=True)
    feed(routed, birth())
    feed(routed, tele(1, ts=1000.0))
    feed(routed, tele(2, ts=1002.0))
    clock.now += 7
    assert routed.device("pi-01").state == "offline"  # type: ignore[union-attr]


def test_rebirth_can_be_switched_off(clock: Clock, sent: Sent) -> None:
    m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, request_rebirth=False)
    feed(m, tele(3))
    assert sent == [] and m.stats()["gaps"] == 0


def test_commands_on_the_namespace_are_not_decoded(monitor: FleetMonitor) -> None:
    monitor.handle("edgemeta/v1/lab/pi-01/cmd", b"x" * 2_000_000)  # an enroll with images
    assert monitor.error_count == 0 and monitor.message_count == 1 and monitor.snapshot() == []


def test_host_ids_are_checked() -> None:
    from edgemeta.errors import MessageError

    with pytest.raises(MessageError, match="invalid host id 'a/b'"):
        FleetMonitor("mqtt://127.0.0.1:1", host_id="a/b")
    with pytest.raises(MessageError, match=r"invalid share group '\$x'"):
        FleetMonitor("mqtt://127.0.0.1:1", share_group="$x")
    m = FleetMonitor("mqtt://127.0.0.1:1")
    assert m.host_id.startswith("monitor-") and json.dumps(m.status_dict())


def test_retained_birth_resyncs_on_the_next_seq(monitor: FleetMonitor, sent: Sent) -> None:
    # A monitor started while the device runs gets its retained birth, then live seq 41.
    monitor.handle(topic("lab", "pi-01", "birth"), birth().to_payload(), retained=True)
    feed(monitor, tele(41, n=40))
    feed(monitor, tele(42, n=41))
    assert monitor.stats()["gaps"] == 0 and sent == []
    feed(monitor, tele(44, n=43))  # from now on gaps count again
    assert monitor.stats()["gaps"] == 1


def test_monitor_reconnect_resyncs_every_device(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, birth())
    feed(monitor, tele(1))
    monitor._tracker.resync()  # what _on_connect does on a reconnect
    feed(monitor, tele(30))
    assert monitor.stats()["gaps"] == 0 and sent == []


# --- review 2: big losses, replays of earlier boots, announced interval, device cap -------------

def test_loss_of_128_or_more_is_a_gap_not_a_redelivery(monitor: FleetMonitor, sent: Sent) -> None:
    feed(monitor, birth())
    for s in (1, 2, 3):
        feed(monitor, tele(s))
    feed(monitor, tele(204, n=203))  # 200 messages lost: formerly read as "behind"
    stats = monitor.stats()
    assert (stats["gaps"], stats["missed"], stats["rebirths_requested"]) == (1, 200, 1)
    assert "expected seq 4, got 204" in sent[0][1].args["reason"]
    feed(monitor, tele(205, n=204))  # checking goes on from there, not stuck until a wrap
    feed(monitor, tele(207, n=206))
    assert monitor.stats()["gaps"] == 2


def test_redelivered_packet_with_an_old_seq_is_still_not_a_gap(monitor: FleetMonitor) -> None:
    feed(monitor, birth())
    for s in range(1, 6):
        feed(monitor, tele(s))
    feed(monitor, tele(2))  # the same (boot, n) and seq again: a redelivery
    feed(monitor, tele(6))
    stats = monitor.stats()
    assert stats["gaps"] == 0 and stats["duplicates"] == 1


def test_replay_of_an_earlier_boot_does_not_replace_the_shown_metrics(
        monitor: FleetMonitor) -> None:
    from dataclasses import replace

    feed(monitor, birth(session=100))
    feed(monitor, replace(tele(1, boot=7), model_version="1.0", latency_p50_ms=1.0))
    # The board restarted (boot 8) with model 2.0; its birth comes first, then the spool
    # replays boot 7's unsent telemetry (model 1.0, slow), then live telemetry.
    b2 = replace(birth(session=200, bd_seq=1), model_version="2.0")
    feed(monitor, b2)
    for i, n in enumerate((1, 2)):
        feed(monitor, replace(tele(i + 1, n=n, session=200, boot=7, replayed=True),
                              latency_p50_ms=50.0))
    st = monitor.device("pi-01")
    assert st is not None and st.model_version == "2.0" and st.latency_p50_ms is None
    assert monitor.stats()["telemetry"] == 3  # still counted
    feed(monitor, replace(tele(3, n=0, session=200, boot=8), model_version="2.0",
                          latency_p50_ms=2.0))
    # A late replay after live telemetry does not replace it either.
    feed(monitor, replace(tele(4, n=3, session=200, boot=7, replayed=True), latency_p50_ms=50.0))
    st = monitor.device("pi-01")
    assert st is not None and (st.model_version, st.latency_p50_ms) == ("2.0", 2.0)
    assert monitor.stats()["gaps"] == 0


def test_announced_interval_is_the_floor_of_the_silence_limit(clock: Clock, sent: Sent) -> None:
    from dataclasses import replace

    m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, offline_after_s=30)
    feed(m, replace(birth(), interval_s=20.0))
    clock.now += 45  # no telemetry yet: 3 x 20 s, not offline_after_s
    assert m.device("pi-01").state == "online"  # type: ignore[union-attr]
    feed(m, replace(birth(), interval_s=10.0))
    # Extra reports (e.g. answers to "report" commands) 0.5 s apart shrink the estimate ...
    for i in range(5):
        feed(m, tele(i + 1, n=i, ts=1000.0 + 0.5 * i))
    clock.now += 20  # ... but 20 s of silence is within 3 x 10 s
    st = m.device("pi-01")
    assert st is not None and st.state == "online" and st.interval_s == 10.0
    clock.now += 11
    assert m.device("pi-01").state == "offline"  # type: ignore[union-attr]


def test_device_table_is_capped(clock: Clock, sent: Sent, caplog: pytest.LogCaptureFixture) -> None:
    from edgemeta.errors import FleetError

    m = FleetMonitor("mqtt://127.0.0.1:1", clock=clock, publish=sent, max_devices=2)
    with caplog.at_level("WARNING", logger="edgemeta.fleet.tracker"):
        for d in ("pi-01", "pi-02", "pi-03", "pi-04"):
            feed(m, birth(device=d))
        feed(m, tele(1, device="pi-03"))
    stats = m.stats()
    assert (stats["devices"], stats["overflow"], stats["errors"]) == (2, 3, 0)
    assert [s.device_id for s in m.snapshot()] == ["pi-01", "pi-02"]
    assert sent == []  # no rebirth requests to devices that are not tracked
    assert sum("device table full (2 devices)" in r.message for r in caplog.records) == 1
    feed(m, tele(1, device="pi-02"))  # known devices go on
    assert m.device("pi-02").telemetry == 1  # type: ignore[union-attr]
    with pytest.raises(FleetError, match="max_devices"):
        FleetMonitor("mqtt://127.0.0.1:1", max_devices=0)


def test_cleared_retained_messages_are_not_errors(monitor: FleetMonitor) -> None:
    monitor.handle("edgemeta/v1/_host/status-ws", b"", retained=True)
    monitor.handle(topic("lab", "pi-01", "birth"), b"", retained=True)
    monitor.handle(topic("lab", "pi-01", "death"), b"")  # a live clear comes with retain=0
    assert monitor.error_count == 0 and monitor.message_count == 3 and monitor.snapshot() == []


def test_default_host_id_is_stable_per_machine() -> None:
    from edgemeta.fleet.commander import default_host_id

    a, b = FleetMonitor("mqtt://127.0.0.1:1"), FleetMonitor("mqtt://127.0.0.1:1")
    assert a.host_id == b.host_id == f"monitor-{default_host_id()}"[:64].rstrip("-.")
    assert not a.transient
