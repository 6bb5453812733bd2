"""Fleet alerts: pure functions over the monitor's device states.

Five kinds, each computed from a :class:`~edgemeta.fleet.tracker.DeviceState` list and a clock
reading, with no I/O, so the monitor, the live view, ``fleet status --json`` and the Prometheus
exporter all report the same alerts:

- ``offline``: a death of the current connection, or silence longer than ``missed_intervals``
  telemetry intervals (``offline_after_s`` while the cadence is unknown);
- ``version-drift``: online devices of one fleet run different model versions; the devices not on
  the majority version are flagged (all of them when no version has a strict majority);
- ``latency``: a device's p50 latency is above ``latency_factor`` x its fleet's median p50 (only
  with at least ``min_latency_devices`` online devices reporting a latency);
- ``seq-gap``: a sequence gap within the last ``gap_window_s`` seconds;
- ``never-birthed``: telemetry from a connection whose birth the monitor never received.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from edgemeta.errors import FleetError
from edgemeta.fleet.tracker import DeviceState

__all__ = ["ALERT_KINDS", "Alert", "AlertConfig", "evaluate", "silence_limit"]

ALERT_KINDS = ("offline", "version-drift", "latency", "seq-gap", "never-birthed")


@dataclass(frozen=True)
class Alert:
    """One problem with one device.

    Attributes:
        device: Device id.
        fleet: Fleet id.
        kind: One of :data:`ALERT_KINDS`.
        detail: Human-readable explanation with the numbers that triggered it.
    """

    device: str
    fleet: str
    kind: str
    detail: str


@dataclass(frozen=True)
class AlertConfig:
    """Thresholds of the alerts.

    Attributes:
        missed_intervals: A device silent for more than this many telemetry intervals is offline.
        interval_s: The telemetry interval; None estimates it per device from its timestamps.
        offline_after_s: Silence limit while a device's interval is unknown (only a birth seen).
        latency_factor: Flag a device whose p50 exceeds this multiple of its fleet's median p50.
        min_latency_devices: Fewest devices with a latency before a fleet median means anything.
        gap_window_s: A sequence gap stays an alert for this many seconds.

    Raises:
        FleetError: If a threshold is not a positive number (or ``min_latency_devices`` < 2).
    """

    missed_intervals: float = 3.0
    interval_s: float | None = None
    offline_after_s: float = 30.0
    latency_factor: float = 2.0
    min_latency_devices: int = 3
    gap_window_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("missed_intervals", "offline_after_s", "latency_factor", "gap_window_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise FleetError(f"{name} must be a positive number, got {value!r}")
        if self.interval_s is not None and (
                isinstance(self.interval_s, bool) or not isinstance(self.interval_s, (int, float))
                or not self.interval_s > 0):
            raise FleetError(f"interval_s must be a positive number or None, got "
                             f"{self.interval_s!r}")
        if (isinstance(self.min_latency_devices, bool) or not isinstance(self.min_latency_devices,
                                                                          int)
                or self.min_latency_devices < 2):
            raise FleetError(f"min_latency_devices must be an integer >= 2, got "
                             f"{self.min_latency_devices!r}")


def silence_limit(config: AlertConfig, device_interval_s: float | None) -> float:
    """Seconds of silence after which a device counts as offline.

    Args:
        config: The thresholds.
        device_interval_s: The device's estimated telemetry interval, or None.
    """
    interval = config.interval_s if config.interval_s is not None else device_interval_s
    if interval is None:
        return config.offline_after_s
    return config.missed_intervals * interval


def evaluate(states: list[DeviceState], now: float, config: AlertConfig | None = None) -> list[Alert]:
    """All alerts of a fleet snapshot, sorted by fleet, device and kind.

    Args:
        states: Usually ``monitor.snapshot()``; the ``state`` field already applies the offline
            rule with the same config.
        now: Monitor clock in unix seconds (for silence and the gap window).
        config: Thresholds; defaults to :class:`AlertConfig`.
    """
    cfg = config or AlertConfig()
    alerts: list[Alert] = []
    for st in states:
        alerts.extend(_device_alerts(st, now, cfg))
    by_fleet: dict[str, list[DeviceState]] = defaultdict(list)
    for st in states:
        if st.state == "online":
            by_fleet[st.fleet].append(st)
    for members in by_fleet.values():
        alerts.extend(_version_drift(members))
        alerts.extend(_latency_regression(members, cfg))
    return sorted(alerts, key=lambda a: (a.fleet, a.device, ALERT_KINDS.index(a.kind)))


def _device_alerts(st: DeviceState, now: float, cfg: AlertConfig) -> list[Alert]:
    out = []
    if st.state == "offline":
        if st.death_reason is not None:
            why = ("stopped (graceful death)" if st.death_reason == "graceful"
                   else "connection lost (Last Will)")
        elif st.last_seen is None:
            why = "never seen alive"
        else:
            why = (f"silent for {now - st.last_seen:.0f} s (limit "
                   f"{silence_limit(cfg, st.interval_s):.0f} s)")
        out.append(Alert(st.device_id, st.fleet, "offline", why))
    if st.last_gap_at is not None and now - st.last_gap_at <= cfg.gap_window_s:
        out.append(Alert(st.device_id, st.fleet, "seq-gap",
                         f"{st.gaps} sequence gap(s), {st.missed} message(s) missed; last "
                         f"{max(0.0, now - st.last_gap_at):.0f} s ago"))
    if not st.born and st.telemetry > 0 and st.last_seen is not None:
        out.append(Alert(st.device_id, st.fleet, "never-birthed",
                         "telemetry received but no birth for its connection; rebirth requested"))
    return out


def _version_drift(members: list[DeviceState]) -> list[Alert]:
    versions = Counter(st.model_version for st in members if st.model_version is not None)
    if len(versions) < 2:
        return []
    (top, top_n), (_, second_n) = versions.most_common(2)
    total = sum(versions.values())
    summary = ", ".join(f"{v} x{n}" for v, n in sorted(versions.items()))
    out = []
    for st in members:
        if st.model_version is None:
            continue
        if top_n > second_n and st.model_version != top:
            out.append(Alert(st.device_id, st.fleet, "version-drift",
                             f"runs {st.model_version}, fleet majority runs {top} "
                             f"({top_n}/{total}: {summary})"))
        elif top_n == second_n:
            out.append(Alert(st.device_id, st.fleet, "version-drift",
                             f"runs {st.model_version}; no majority version in the fleet "
                             f"({summary})"))
    return out


def _latency_regression(members: list[DeviceState], cfg: AlertConfig) -> list[Alert]:
    measured = [(st, p50) for st in members if (p50 := st.latency_p50_ms) is not None]
    if len(measured) < cfg.min_latency_devices:
        return []
    median = statistics.median(p50 for _, p50 in measured)
    if median <= 0:
        return []
    out = []
    for st, p50 in measured:
        if p50 > cfg.latency_factor * median:
            out.append(Alert(st.device_id, st.fleet, "latency",
                             f"p50 {p50:.2f} ms is {p50 / median:.1f}x the fleet median "
                             f"{median:.2f} ms (limit {cfg.latency_factor:g}x)"))
    return out
