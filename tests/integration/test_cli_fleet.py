"""`edgemeta fleet status` and `fleet watch` against a real mosquitto with a real reporter."""

import json

from click.testing import CliRunner

from edgemeta.cli import cli
from edgemeta.fleet import DeviceReporter, DeviceStatus


def test_fleet_status_json_and_watch(mosquitto_broker):
    status = DeviceStatus(model_version="1.2.3", model_sha256="ab" * 32, labels=("a", "b"),
                          inference_count=7, latency_p50_ms=0.3, latency_p95_ms=0.5,
                          accuracy=0.9, evaluated=10)
    with DeviceReporter(mosquitto_broker.url, "pi-7", fleet="site-a", interval_s=0.5,
                        status=lambda: status):
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto_broker.url,
                                     "--json", "--wait", "1"])
        assert r.exit_code == 0, r.output
        data = json.loads(r.output)
        (dev,) = [d for d in data["devices"] if d["device_id"] == "pi-7"]
        assert dev["state"] == "online" and dev["fleet"] == "site-a"
        assert dev["model_version"] == "1.2.3" and dev["n_classes"] == 2
        assert dev["inference_count"] == 7 and dev["accuracy"] == 0.9
        r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", mosquitto_broker.url,
                                     "--fleet", "site-a", "--duration", "1.5", "--refresh", "0.5"])
        assert r.exit_code == 0, r.output
        assert "pi-7" in r.output and "1.2.3" in r.output


def test_board_with_thousands_of_classes_still_reports(mosquitto_broker):
    from edgemeta.fleet import FleetMonitor

    labels = tuple(f"class-{i:05d}-" + "x" * 40 for i in range(5000))  # ~250 KB of names
    with FleetMonitor(mosquitto_broker.url) as monitor, \
            DeviceReporter(mosquitto_broker.url, "pi-big", interval_s=60,
                           status=lambda: DeviceStatus(labels=labels)) as reporter:
        reporter.publish_now()
        assert monitor.wait_until(lambda st: any(s.n_classes == 5000 for s in st), 10.0), \
            (monitor.snapshot(), monitor.errors)
        assert monitor.error_count == 0
