"""Fakes for feeding a FleetMonitor through ``handle()`` without a broker."""

from __future__ import annotations

from edgemeta.fleet import Birth, Death, FleetMonitor, Reply, Telemetry, topic
from edgemeta.fleet.schema import decode


class Clock:
    """Manually advanced unix-seconds clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Sent(list):
    """Collects (topic, Command) of every rebirth request."""

    def __call__(self, topic_name: str, payload: bytes) -> None:
        self.append((topic_name, decode("cmd", payload)))


def birth(session: int = 100, device: str = "pi-01", bd_seq: int = 0,
          interval_s: float | None = None) -> Birth:
    return Birth(device_id=device, fleet="lab", session=session, ts=1.0, model_version="1.0",
                 model_sha256=None, backend=None, board=None, labels=("a",),
                 agent_version="0.1.0", bd_seq=bd_seq, seq=0, interval_s=interval_s)


def tele(seq: int, n: int | None = None, session: int = 100, device: str = "pi-01",
         boot: int = 7, ts: float | None = None, count: int = 0, **kw: object) -> Telemetry:
    """Telemetry number ``n`` (default ``seq``), sent at ``ts`` (default 1000 + n)."""
    n = seq if n is None else n
    fields: dict[str, object] = dict(
        device_id=device, fleet="lab", session=session, seq=seq,
        ts=1000.0 + n if ts is None else ts, uptime_s=1.0, model_version="1.0",
        model_sha256=None, labels=("a",), n_classes=1, inference_count=count,
        latency_p50_ms=1.0, latency_p95_ms=2.0, rss_bytes=1, accuracy=None, evaluated=0,
        boot=boot, n=n)
    fields.update(kw)  # may override any field (rss_bytes, n_classes, replayed, ...)
    return Telemetry(**fields)  # type: ignore[arg-type]


def feed(m: FleetMonitor, msg: Birth | Telemetry | Death | Reply, retained: bool = False) -> None:
    m.handle(topic(msg.fleet, msg.device_id, msg.KIND), msg.to_payload(), retained)
