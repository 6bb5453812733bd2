"""Simulated devices: message generation and argument checking, no broker needed."""

from __future__ import annotations

import itertools
import resource

import pytest

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import Birth, Death, Telemetry, decode, parse_topic
from edgemeta.fleet.simulate import FleetSimulator, SimDevice, SimulationStats, raise_fd_limit


def roundtrip(msg):
    """Encode and decode with the protocol's strict decoder: the payload must be valid."""
    return decode(msg.KIND, msg.to_payload())


def test_birth_and_will_share_bd_seq_and_seq_restarts() -> None:
    dev = SimDevice("sim-00001", "lab", boot_ms=1_700_000_000_000, seed=1)
    will = roundtrip(dev.will())
    birth = roundtrip(dev.birth())
    assert isinstance(will, Death) and isinstance(birth, Birth)
    assert (will.reason, will.ts, will.seq) == ("lost", None, None)
    assert will.bd_seq == birth.bd_seq == 0
    assert will.session == birth.session == 1_700_000_000_000
    assert birth.seq == 0 and birth.labels and birth.model_sha256 is not None

    # A second connection: bd_seq +1 in both, a larger session, seq restarts at 0.
    for _ in range(3):
        roundtrip(dev.telemetry())
    will2, birth2 = roundtrip(dev.will()), roundtrip(dev.birth())
    assert will2.bd_seq == birth2.bd_seq == 1
    assert will2.session == birth2.session > birth.session
    assert birth2.seq == 0
    assert roundtrip(dev.telemetry()).seq == 1


def test_telemetry_seq_wraps_and_boot_n_count_up() -> None:
    dev = SimDevice("sim-00002", "lab", boot_ms=42, seed=2)
    dev.will()
    dev.birth()
    msgs = [roundtrip(dev.telemetry()) for _ in range(300)]
    assert all(isinstance(m, Telemetry) for m in msgs)
    seqs = [m.seq for m in msgs]
    # seq 1..255, then 0, 1, ... : +1 mod 256 after the birth's 0.
    assert seqs[:3] == [1, 2, 3] and seqs[254] == 255 and seqs[255] == 0 and seqs[256] == 1
    assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(seqs))
    assert [m.n for m in msgs] == list(range(300))
    assert {m.boot for m in msgs} == {42}
    assert all(m.dropped == 0 and m.replayed is False for m in msgs)
    assert all(m.n_classes == len(m.labels) and m.latency_p95_ms > m.latency_p50_ms for m in msgs)
    counts = [m.inference_count for m in msgs]
    assert counts == sorted(counts)  # a counter since start never goes down
    assert dev.sent == 300


def test_graceful_death_continues_seq_and_keeps_bd_seq() -> None:
    dev = SimDevice("sim-00003", "lab", seed=3)
    dev.will()
    dev.birth()
    last = roundtrip(dev.telemetry())
    death = roundtrip(dev.graceful_death())
    assert isinstance(death, Death)
    assert death.reason == "graceful" and death.ts is not None
    assert death.seq == (last.seq + 1) % 256 and death.bd_seq == 0


def test_topics_and_ids_are_valid() -> None:
    dev = SimDevice("sim-00004", "lab")
    parts = parse_topic(dev.topic("telemetry"))
    assert (parts.fleet, parts.device_id, parts.kind) == ("lab", "sim-00004", "telemetry")
    with pytest.raises(MessageError, match="invalid device id"):
        SimDevice("bad id", "lab")


def test_devices_get_distinct_ids_clients_and_metrics() -> None:
    sim = FleetSimulator("mqtt://127.0.0.1:1", devices=3, rate_hz=2, fleet="lab", prefix="pi")
    ids = [d.device_id for d in sim.devices]
    assert ids == ["pi-00000", "pi-00001", "pi-00002"]
    client_ids = {c.client._client_id for c in sim._conns}  # one client per device
    assert client_ids == {b"edgemeta-lab-pi-00000", b"edgemeta-lab-pi-00001",
                          b"edgemeta-lab-pi-00002"}
    # Seeded per device: the fleet does not report one identical latency everywhere.
    p50s = {d.telemetry().latency_p50_ms for d in sim.devices}
    assert len(p50s) == 3
    assert sim.sent_by_device() == dict.fromkeys(ids, 1)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"devices": 0}, "devices must be an integer >= 1"),
        ({"devices": 2.5}, "devices must be an integer >= 1"),
        ({"devices": 1, "rate_hz": 0}, "rate_hz must be a positive number"),
        ({"devices": 1, "rate_hz": float("inf")}, "rate_hz must be a positive number"),
        ({"devices": 1, "keepalive_s": 0}, "keepalive_s must be an integer >= 1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(FleetError, match=needle):
        FleetSimulator("mqtt://127.0.0.1:1", **kwargs)


def test_constructor_rejects_bad_url_fleet_and_prefix() -> None:
    with pytest.raises(FleetError, match="unsupported broker URL"):
        FleetSimulator("ws://127.0.0.1:1", devices=1)
    with pytest.raises(MessageError, match="invalid fleet"):
        FleetSimulator("mqtt://127.0.0.1:1", devices=1, fleet="a/b")
    with pytest.raises(MessageError, match="invalid device id"):
        FleetSimulator("mqtt://127.0.0.1:1", devices=1, prefix="x" * 70)


def test_run_before_start_and_start_twice_are_refused() -> None:
    sim = FleetSimulator("mqtt://127.0.0.1:1", devices=1)
    with pytest.raises(FleetError, match="call start\\(\\) before run\\(\\)"):
        sim.run(1)
    sim.stop()  # never started: a no-op that marks it stopped
    with pytest.raises(FleetError, match="simulator is stopped"):
        sim.start()


def test_unreachable_broker_is_reported_with_each_reason() -> None:
    from edgemeta.fleet import free_port

    port = free_port()  # nothing listens there
    sim = FleetSimulator(f"mqtt://127.0.0.1:{port}", devices=3, connect_timeout_s=5)
    with pytest.raises(FleetError, match=f"none of 3 simulated devices could connect to "
                                         f"mqtt://127.0.0.1:{port}") as info:
        sim.start()
    assert "refused" in str(info.value).lower()
    assert sim.stats.connect_failures == 3 and sim.stats.connected == 0
    sim.stop()


def test_raise_fd_limit_never_exceeds_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_fd_limit(10) >= min(soft, 10)  # never lowers
    got = raise_fd_limit(10**9)
    assert got <= (hard if hard != resource.RLIM_INFINITY else 10**9)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got


def test_stats_backlog_and_summary() -> None:
    st = SimulationStats(devices=2, connected=2, sent=10, acked=7, behind=1)
    assert st.backlog == 3
    line = st.summary()
    assert "devices=2" in line and "sent=10" in line and "backlog=3" in line and "behind=1" in line


def test_births_announce_the_telemetry_period() -> None:
    """The monitor uses the birth's interval_s as the floor of its silence limit."""
    sim = FleetSimulator("mqtt://127.0.0.1:1", devices=2, rate_hz=4.0)
    assert all(roundtrip(d.birth()).interval_s == 0.25 for d in sim.devices)
    assert SimDevice("pi-01", "lab").birth().interval_s is None
