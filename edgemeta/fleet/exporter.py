"""Prometheus exporter: the monitor's device states, alerts and counters as metrics.

Metrics are built at scrape time from one snapshot (a custom collector), so the per-message path
of the monitor pays nothing for them. ``prometheus-client`` is imported lazily: it is a host-side
dependency (``edgemeta[host]``).

Metrics (every per-device one has the labels ``fleet`` and ``device``):

- ``edgemeta_device_up`` 1 online / 0 offline
- ``edgemeta_device_info{model_version, model_sha256, backend, board, agent_version}`` 1
- ``edgemeta_device_last_seen_timestamp_seconds``
- ``edgemeta_inference_latency_ms{quantile="0.5"|"0.95"}``
- ``edgemeta_inferences_total``, ``edgemeta_inference_rate`` (per second)
- ``edgemeta_classes``, ``edgemeta_accuracy``, ``edgemeta_rss_bytes``
- ``edgemeta_seq_gaps_total``, ``edgemeta_seq_missed_total``
- ``edgemeta_device_alert{kind}`` 1 per active alert; ``edgemeta_alerts{kind}`` counts by kind
- ``edgemeta_monitor_messages_total`` and the other :meth:`FleetMonitor.stats` counters as
  ``edgemeta_monitor_<name>_total``; ``edgemeta_monitor_devices``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgemeta._deps import require
from edgemeta.errors import FleetError
from edgemeta.fleet.alerts import ALERT_KINDS

if TYPE_CHECKING:
    from edgemeta.fleet.monitor import FleetMonitor

__all__ = ["FleetCollector", "MetricsServer", "serve_metrics"]

_DEV = ["fleet", "device"]
# Monitor counters exported as *_total; "devices" is a gauge.
_COUNTERS = ("messages", "telemetry", "telemetry_unique", "duplicates", "unverifiable", "gaps",
             "missed", "late", "errors", "rebirths_requested", "rebirths_suppressed", "overflow")


def _as_float(value: int) -> float | None:
    """A device-reported integer as a sample value, or None if it exceeds a float.

    The schema bounds counters from below only: one board reporting ``inference_count``
    10**400 must cost its own sample, not raise OverflowError and fail the scrape of the fleet.
    """
    try:
        return float(value)
    except OverflowError:
        return None


def _metrics() -> Any:
    return require("prometheus_client.core", "the Prometheus exporter")


class FleetCollector:
    """A prometheus-client collector reading one :class:`FleetMonitor` at every scrape.

    Args:
        monitor: The (started) monitor.
    """

    def __init__(self, monitor: FleetMonitor) -> None:
        self._monitor = monitor
        self._core = _metrics()

    def describe(self) -> list[Any]:
        """No fixed description: registering must not trigger a scrape of an empty monitor."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield every metric family from one consistent snapshot."""
        core = self._core
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        states = self._monitor.snapshot()
        alerts = self._monitor.alerts(states)

        up = gauge("edgemeta_device_up", "1 if the device is online, else 0", labels=_DEV)
        info = gauge("edgemeta_device_info", "Model and software of the device (value 1)",
                     labels=_DEV + ["model_version", "model_sha256", "backend", "board",
                                    "agent_version"])
        seen = gauge("edgemeta_device_last_seen_timestamp_seconds",
                     "Monitor time of the last birth, telemetry or reply", labels=_DEV)
        latency = gauge("edgemeta_inference_latency_ms", "Inference latency quantiles reported "
                        "by the device", labels=_DEV + ["quantile"])
        inferences = counter("edgemeta_inferences", "Inferences since the agent started",
                             labels=_DEV)
        rate = gauge("edgemeta_inference_rate", "Inferences per second between the last two "
                     "telemetry messages", labels=_DEV)
        classes = gauge("edgemeta_classes", "Enrolled classes", labels=_DEV)
        accuracy = gauge("edgemeta_accuracy", "Few-shot accuracy on labelled images", labels=_DEV)
        rss = gauge("edgemeta_rss_bytes", "Agent resident memory", labels=_DEV)
        gaps = counter("edgemeta_seq_gaps", "Sequence gaps seen by the monitor", labels=_DEV)
        missed = counter("edgemeta_seq_missed", "Messages missing according to the sequence",
                         labels=_DEV)
        for st in states:
            key = [st.fleet, st.device_id]
            up.add_metric(key, 1.0 if st.state == "online" else 0.0)
            info.add_metric(key + [st.model_version or "", st.model_sha256 or "",
                                   st.backend or "", st.board or "", st.agent_version or ""], 1.0)
            if st.last_seen is not None:
                seen.add_metric(key, st.last_seen)
            if st.latency_p50_ms is not None:
                latency.add_metric(key + ["0.5"], st.latency_p50_ms)
            if st.latency_p95_ms is not None:
                latency.add_metric(key + ["0.95"], st.latency_p95_ms)
            if st.inference_count is not None and \
                    (count := _as_float(st.inference_count)) is not None:
                inferences.add_metric(key, count)
            if st.inference_rate is not None:
                rate.add_metric(key, st.inference_rate)
            if (n_classes := _as_float(st.n_classes)) is not None:
                classes.add_metric(key, n_classes)
            if st.accuracy is not None:
                accuracy.add_metric(key, st.accuracy)
            if st.rss_bytes is not None and (rss_bytes := _as_float(st.rss_bytes)) is not None:
                rss.add_metric(key, rss_bytes)
            gaps.add_metric(key, float(st.gaps))
            missed.add_metric(key, float(st.missed))
        yield from (up, info, seen, latency, inferences, rate, classes, accuracy, rss, gaps, missed)

        per_device = gauge("edgemeta_device_alert", "1 per active alert of a device",
                           labels=_DEV + ["kind"])
        for a in alerts:
            per_device.add_metric([a.fleet, a.device, a.kind], 1.0)
        yield per_device
        by_kind = Counter(a.kind for a in alerts)
        total = gauge("edgemeta_alerts", "Active alerts by kind", labels=["kind"])
        for kind in ALERT_KINDS:  # every kind, zeros included, so Grafana graphs have no holes
            total.add_metric([kind], float(by_kind.get(kind, 0)))
        yield total

        stats = self._monitor.stats()
        for name in _COUNTERS:
            yield counter(f"edgemeta_monitor_{name}", f"Monitor counter '{name}' (see "
                          "FleetMonitor.stats)", value=float(stats[name]))
        yield gauge("edgemeta_monitor_devices", "Devices known to the monitor",
                    value=float(stats["devices"]))


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; stop it with :meth:`stop`.

    Attributes:
        host: Address it listens on.
        port: TCP port.
    """

    def __init__(self, httpd: Any, thread: Any, host: str, port: int) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)
        self._httpd = None


def serve_metrics(monitor: FleetMonitor, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``monitor``'s metrics on ``http://host:port/metrics`` from a daemon thread.

    Args:
        monitor: A started monitor.
        port: TCP port (0 picks a free one).
        host: Bind address; loopback by default, ``0.0.0.0`` for a Prometheus on another host.

    Raises:
        FleetError: If the port is invalid or cannot be bound.
        MissingDependencyError: Without prometheus-client (``pip install 'edgemeta[host]'``).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise FleetError(f"port must be an integer in 0..65535, got {port!r}")
    client = require("prometheus_client", "the Prometheus exporter")
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(monitor))
    try:
        httpd, thread = client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise FleetError(f"cannot serve metrics on {host}:{port} ({exc}): expected a free port "
                         "and a local address") from None
    return MetricsServer(httpd, thread, host, int(httpd.server_address[1]))
