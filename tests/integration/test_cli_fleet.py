"""`edgemeta fleet status`, `watch` and `exporter` against a real mosquitto with real reporters."""

import json
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

# prometheus-client is in edgemeta[dev]: a missing one fails here, it is not skipped.
from prometheus_client.parser import text_string_to_metric_families

from edgemeta.cli import cli
from edgemeta.fleet import DeviceReporter, DeviceStatus, free_port


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
        assert dev["born"] is True and dev["gaps"] == 0
        assert data["alerts"] == []
        assert data["stats"]["telemetry"] >= 1 and data["stats"]["errors"] == 0
        assert data["stats"]["telemetry_unique"] == data["stats"]["telemetry"]
        r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", mosquitto_broker.url,
                                     "--fleet", "site-a", "--duration", "1.5", "--refresh", "0.5",
                                     "--sort", "latency"], env={"COLUMNS": "160"})
        assert r.exit_code == 0, r.output
        assert "pi-7" in r.output and "1.2.3" in r.output and "1 devices, 1 online" in r.output
        # A glob --fleet filters locally; --filter too.
        r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", mosquitto_broker.url,
                                     "--fleet", "site-*", "--duration", "0.6", "--refresh", "0.3"])
        assert r.exit_code == 0, r.output
        assert "pi-7" in r.output
        r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", mosquitto_broker.url,
                                     "--filter", "other/*", "--duration", "0.6", "--refresh", "0.3"])
        assert r.exit_code == 0, r.output
        assert "pi-7" not in r.output and "0 devices" in r.output
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto_broker.url,
                                     "--fleet", "other-*", "--json", "--wait", "0.5"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["devices"] == []


def test_fleet_status_reports_alerts(mosquitto_broker):
    stats = [DeviceStatus(model_version=v, latency_p50_ms=p50, latency_p95_ms=p50)
             for v, p50 in (("1.0", 1.0), ("1.0", 1.1), ("0.9", 9.0))]
    reporters = [DeviceReporter(mosquitto_broker.url, f"pi-{i}", fleet="lab", interval_s=0.3,
                                status=lambda st=st: st) for i, st in enumerate(stats)]
    for r in reporters:
        r.start()
    try:
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto_broker.url,
                                     "--json", "--wait", "1"])
        assert r.exit_code == 0, r.output
        data = json.loads(r.output)
    finally:
        for rep in reporters:
            rep.stop()
    alerts = sorted((a["device"], a["kind"]) for a in data["alerts"])
    assert alerts == [("pi-2", "latency"), ("pi-2", "version-drift")], data["alerts"]


def test_fleet_exporter_serves_metrics(mosquitto_broker):
    port = free_port()
    status = DeviceStatus(model_version="3.1", labels=("a", "b", "c"), inference_count=42,
                          latency_p50_ms=0.4, latency_p95_ms=0.8)
    # A short interval: the exporter's monitor subscribes after the reporter started, so it needs
    # live telemetry (the retained birth has no inference counts).
    with DeviceReporter(mosquitto_broker.url, "pi-exp", fleet="lab", interval_s=0.3,
                        status=lambda: status):
        proc = subprocess.Popen(
            [sys.executable, "-c", "from edgemeta.cli import main; main()", "fleet", "exporter",
             "--broker", mosquitto_broker.url, "--port", str(port), "--duration", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            text = None
            for _ in range(100):  # bounded: 100 x 0.2 s
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=2) as resp:
                        body = resp.read().decode()
                    if 'edgemeta_inferences_total{device="pi-exp"' in body:
                        text = body
                        break
                except OSError:
                    pass
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            assert text is not None, proc.stderr.read() if proc.poll() is not None else "timeout"
        finally:
            proc.terminate()
            proc.wait(10)
    got = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    dev = (("device", "pi-exp"), ("fleet", "lab"))
    assert got[("edgemeta_device_up", dev)] == 1
    assert got[("edgemeta_inferences_total", dev)] == 42
    assert got[("edgemeta_classes", dev)] == 3
    assert got[("edgemeta_inference_latency_ms", dev + (("quantile", "0.5"),))] == 0.4
    assert got[("edgemeta_seq_gaps_total", dev)] == 0
    assert got[("edgemeta_monitor_telemetry_total", ())] >= 1
    assert got[("edgemeta_alerts", (("kind", "offline"),))] == 0
    info = [k for k in got if k[0] == "edgemeta_device_info"]
    assert len(info) == 1 and ("model_version", "3.1") in info[0][1]


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


def test_fleet_status_leaves_no_retained_host_state(mosquitto_broker):
    """Every `fleet status` used to leave a retained monitor-<random> online:false behind."""
    import threading

    import paho.mqtt.client as mqtt

    for _ in range(2):
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto_broker.url,
                                     "--json", "--wait", "0.2"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["host_id"].startswith("status-")
    got, barrier = [], threading.Event()

    def on_message(c, u, msg):
        if msg.topic == "edgemeta/v1/_barrier":
            barrier.set()
        else:
            got.append((msg.topic, msg.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto_broker.port)
    client.loop_start()
    try:
        client.subscribe([("edgemeta/v1/_host/+", 1), ("edgemeta/v1/_barrier", 1)])
        client.publish("edgemeta/v1/_barrier", b"x", qos=1)  # after the retained ones, in order
        assert barrier.wait(10.0)
    finally:
        client.disconnect()
        client.loop_stop()
    assert got == []
