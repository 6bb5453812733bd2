"""FleetSimulator -> real mosquitto -> FleetMonitor: every device and every message accounted for.

Every wait is bounded; the timeouts are generous ceilings for a busy machine, not speed claims
(those are measured by benchmarks/fleet_scale.py).
"""

from __future__ import annotations

import pytest

from edgemeta.fleet import Broker, DeviceState, FleetMonitor
from edgemeta.fleet.simulate import FleetSimulator

pytestmark = pytest.mark.integration

WAIT_S = 20.0


def all_dead(n: int, reason: str):
    def check(states: list[DeviceState]) -> bool:
        return (len(states) == n
                and all(s.state == "offline" and s.death_reason == reason for s in states))
    return check


def test_fifty_devices_every_message_counted_and_graceful_deaths(
        mosquitto_broker: Broker) -> None:
    with FleetMonitor(mosquitto_broker.url, fleet_pattern="sim50", offline_after_s=300) as mon:
        sim = FleetSimulator(mosquitto_broker.url, devices=50, rate_hz=5, fleet="sim50")
        sim.start()
        assert sim.stats.connected == 50 and sim.stats.connect_failures == 0
        assert sim.stats.births == 50
        sim.run(2.0)
        assert sim.drain(WAIT_S), sim.stats.summary()
        st = sim.stats
        # 50 devices x 5 Hz x 2 s; the simulator kept up on loopback (nothing left behind).
        assert st.sent + st.behind == 500 and st.sent >= 450, st.summary()
        assert st.acked == st.sent and st.disconnects == 0
        sent = sim.sent_by_device()
        assert sum(sent.values()) == st.sent

        assert mon.wait_until(
            lambda states: len(states) == 50
            and sum(s.telemetry for s in states) >= st.sent, WAIT_S), mon.stats()
        stats = mon.stats()
        assert stats["devices"] == 50
        assert stats["telemetry"] == stats["telemetry_unique"] == st.sent
        assert stats["duplicates"] == stats["gaps"] == stats["missed"] == stats["errors"] == 0
        states = {s.device_id: s for s in mon.snapshot()}
        assert set(states) == set(sent)
        for device_id, s in states.items():
            assert s.state == "online" and s.born and s.bd_seq == 0
            assert s.telemetry == sent[device_id]
            assert s.last_seq == sent[device_id] % 256  # seq 0 in the birth, +1 per message

        sim.stop()
        assert st.deaths_sent == st.deaths_acked == 50
        assert mon.wait_until(all_dead(50, "graceful"), WAIT_S), mon.snapshot()[:3]
        assert mon.stats()["gaps"] == 0  # the graceful death's seq follows the last telemetry


def test_abort_makes_the_broker_send_every_last_will(mosquitto_broker: Broker) -> None:
    with FleetMonitor(mosquitto_broker.url, fleet_pattern="simwill", offline_after_s=300) as mon:
        sim = FleetSimulator(mosquitto_broker.url, devices=20, rate_hz=2, fleet="simwill")
        sim.start()
        sim.run(0.6)
        assert mon.wait_until(lambda s: len(s) == 20 and all(x.state == "online" for x in s),
                              WAIT_S)
        assert sim.abort() == 20
        assert sim.stats.deaths_sent == 0  # the devices said nothing: the broker speaks for them
        assert mon.wait_until(all_dead(20, "lost"), WAIT_S), mon.snapshot()[:3]
        assert all(s.bd_seq == 0 for s in mon.snapshot())


def test_cli_simulate_prints_the_summary(mosquitto_broker: Broker) -> None:
    from click.testing import CliRunner

    from edgemeta.cli import cli

    with FleetMonitor(mosquitto_broker.url, fleet_pattern="clisim", offline_after_s=300) as mon:
        r = CliRunner().invoke(cli, ["fleet", "simulate", "--broker", mosquitto_broker.url,
                                     "--devices", "5", "--rate", "4", "--seconds", "1",
                                     "--fleet", "clisim", "--prefix", "cli"])
        assert r.exit_code == 0, r.output
        assert "connected 5/5 devices" in r.output
        summary = r.output.strip().splitlines()[-1]
        fields = dict(kv.split("=", 1) for kv in summary.split())
        assert fields["devices"] == "5" and fields["connected"] == "5"
        assert fields["deaths"] == "5/5" and fields["backlog"] == "0"
        sent = int(fields["sent"])
        assert sent + int(fields["behind"]) == 20 and sent > 0
        assert mon.wait_until(all_dead(5, "graceful"), WAIT_S)
        assert {s.device_id for s in mon.snapshot()} == {f"cli-{i:05d}" for i in range(5)}
        assert mon.stats()["telemetry_unique"] == sent


def test_cli_simulate_reports_an_unreachable_broker() -> None:
    from click.testing import CliRunner

    from edgemeta.cli import cli
    from edgemeta.fleet import free_port

    port = free_port()
    r = CliRunner().invoke(cli, ["fleet", "simulate", "--broker", f"mqtt://127.0.0.1:{port}",
                                 "--devices", "2", "--seconds", "1"])
    assert r.exit_code == 1
    assert f"none of 2 simulated devices could connect to mqtt://127.0.0.1:{port}" in r.output


def test_mosquitto_max_queued_messages_option() -> None:
    from edgemeta.errors import FleetError
    from edgemeta.fleet import free_port
    from edgemeta.fleet.broker import MosquittoBroker
    from tests.integration.conftest import require_mosquitto

    require_mosquitto()
    with pytest.raises(FleetError, match="max_queued_messages must be an integer >= 0"):
        MosquittoBroker("127.0.0.1", free_port(), max_queued_messages=-1)
    with MosquittoBroker("127.0.0.1", free_port(), max_queued_messages=0) as broker:
        assert "max_queued_messages 0" in (broker.dir / "mosquitto.conf").read_text().splitlines()
        # mosquitto accepted the setting: it runs and carries a small fleet.
        stats = FleetSimulator(broker.url, devices=3, rate_hz=5, fleet="mq").simulate(0.4)
        assert stats.connected == 3 and stats.deaths_acked == 3 and stats.sent > 0
