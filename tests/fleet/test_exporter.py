"""Prometheus collector over a monitor fed by handle(), and the HTTP endpoint on loopback."""

from __future__ import annotations

import urllib.request

# prometheus-client is in edgemeta[dev]: a missing one fails here, it is not skipped.
import prometheus_client as prom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgemeta.errors import FleetError
from edgemeta.fleet import Birth, Death, FleetMonitor, Telemetry, topic
from edgemeta.fleet.exporter import FleetCollector, serve_metrics


def feed(m: FleetMonitor, msg: Birth | Telemetry | Death) -> None:
    m.handle(topic(msg.fleet, msg.device_id, msg.KIND), msg.to_payload())


def telemetry(device: str, seq: int, p50: float, count: int, version: str = "1.0") -> Telemetry:
    return Telemetry(device_id=device, fleet="lab", session=1, seq=seq, ts=100.0 + seq * 2,
                     uptime_s=1.0, model_version=version, model_sha256=None, labels=("a", "b"),
                     n_classes=2, inference_count=count, latency_p50_ms=p50,
                     latency_p95_ms=p50 * 2, rss_bytes=1000, accuracy=0.5, evaluated=4,
                     boot=1, n=seq - 1)


def birth(device: str, version: str = "1.0") -> Birth:
    return Birth(device_id=device, fleet="lab", session=1, ts=1.0, model_version=version,
                 model_sha256="ab", backend="litert", board="rpi4", labels=("a", "b"),
                 agent_version="0.1.0")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def monitor() -> FleetMonitor:
    m = FleetMonitor("mqtt://127.0.0.1:1", publish=lambda t, p: None)
    for d, p50, version in (("pi-1", 1.0, "1.0"), ("pi-2", 1.1, "1.0"), ("pi-3", 5.0, "0.9")):
        feed(m, birth(d, version))
        feed(m, telemetry(d, 1, p50, 10, version))
        feed(m, telemetry(d, 2, p50, 30, version))
    feed(m, telemetry("pi-1", 4, 1.0, 40))  # seq 3 missing: one gap
    feed(m, birth("pi-4"))
    feed(m, Death("pi-4", "lab", 1, 2.0, "lost"))
    return m


def test_collector_metrics(monitor: FleetMonitor) -> None:
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(monitor))
    got = samples(prom.generate_latest(registry).decode())

    def dev(name: str, device: str, **extra: str) -> float:
        return got[(name, tuple(sorted({"fleet": "lab", "device": device, **extra}.items())))]

    assert dev("edgemeta_device_up", "pi-1") == 1 and dev("edgemeta_device_up", "pi-4") == 0
    assert dev("edgemeta_device_info", "pi-3", model_version="0.9", model_sha256="",
               backend="litert", board="rpi4", agent_version="0.1.0") == 1
    assert dev("edgemeta_inference_latency_ms", "pi-3", quantile="0.5") == 5.0
    assert dev("edgemeta_inference_latency_ms", "pi-3", quantile="0.95") == 10.0
    assert dev("edgemeta_inferences_total", "pi-2") == 30
    assert dev("edgemeta_inference_rate", "pi-2") == 10.0  # 20 inferences over 2 s
    assert dev("edgemeta_classes", "pi-1") == 2 and dev("edgemeta_accuracy", "pi-1") == 0.5
    assert dev("edgemeta_seq_gaps_total", "pi-1") == 1 and dev("edgemeta_seq_gaps_total", "pi-2") == 0
    assert dev("edgemeta_seq_missed_total", "pi-1") == 1
    assert dev("edgemeta_device_alert", "pi-3", kind="version-drift") == 1
    assert dev("edgemeta_device_alert", "pi-3", kind="latency") == 1
    assert dev("edgemeta_device_alert", "pi-4", kind="offline") == 1
    by_kind = {k: got[("edgemeta_alerts", (("kind", k),))]
               for k in ("offline", "version-drift", "latency", "seq-gap", "never-birthed")}
    assert by_kind == {"offline": 1, "version-drift": 1, "latency": 1, "seq-gap": 1,
                       "never-birthed": 0}
    stats = monitor.stats()
    assert got[("edgemeta_monitor_messages_total", ())] == stats["messages"] == 12
    assert got[("edgemeta_monitor_gaps_total", ())] == 1
    assert got[("edgemeta_monitor_telemetry_unique_total", ())] == 7
    assert got[("edgemeta_monitor_devices", ())] == 4
    assert got[("edgemeta_monitor_overflow_total", ())] == 0  # devices beyond max_devices


def test_http_endpoint_on_loopback(monitor: FleetMonitor) -> None:
    server = serve_metrics(monitor, 0)
    try:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read().decode()
        assert samples(text)[("edgemeta_monitor_devices", ())] == 4
        with pytest.raises(FleetError, match="cannot serve metrics on 127.0.0.1"):
            serve_metrics(monitor, server.port)  # port taken
    finally:
        server.stop()
        server.stop()
    with pytest.raises(FleetError, match="port must be an integer in 0..65535"):
        serve_metrics(monitor, 70000)
