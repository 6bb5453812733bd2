"""Fleet roll-outs over MQTT: canary devices first, then the rest, stopping on too many failures.

Which devices exist and what they run comes from the fleet itself (their retained birth
messages), so there is no host-side state file: a device that already reports the bundle's
version and model is skipped, and running the same roll-out again continues where it stopped.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from edgemeta.bundle import read_bundle
from edgemeta.errors import BundleError, FlashError
from firmware_bridge.ota.sender import OtaEngine, Transfer
from firmware_bridge.ota.transport import read_bundle_bytes, split_mqtt_url

__all__ = ["DeviceOutcome", "RolloutReport", "canary_count", "discover", "parse_canary",
           "rollout", "render_rollout"]

_DONE = ("installed", "up-to-date", "failed", "offline", "not-started")


@dataclass
class DeviceOutcome:
    """One device in a roll-out.

    ``state``: ``waiting``, ``up-to-date`` (skipped: it already runs the bundle; or the board
    answered that it already had it, its birth being stale), ``offline`` (skipped: the fleet
    reports it offline), a transfer state while it runs, then ``installed`` or ``failed``;
    ``not-started`` when the roll-out stopped before reaching it.
    """

    fleet: str
    device: str
    phase: str = "-"
    state: str = "waiting"
    version_before: str | None = None
    received: int = 0
    chunks: int = 0
    reason: str | None = None
    message: str | None = None
    seconds: float | None = None
    transfer: Transfer | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.fleet}/{self.device}"


@dataclass
class RolloutReport:
    """What a roll-out did; ``ok`` when every matching device now runs the bundle."""

    version: str
    pattern: str
    devices: list[DeviceOutcome]
    stopped: bool = False
    stop_reason: str | None = None
    seconds: float = 0.0
    wire_bytes: int = 0

    def count(self, state: str) -> int:
        return sum(d.state == state for d in self.devices)

    @property
    def installed(self) -> int:
        return self.count("installed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing was left out (offline or not started), and at least one
        device matched: every matching device now runs the bundle."""
        return (not self.stopped and self.failed == 0 and bool(self.devices)
                and not self.count("offline") and not self.count("not-started"))

    def summary(self) -> str:
        if not self.devices:
            return f"roll-out of {self.version} to {self.pattern}: {self.stop_reason}"
        parts = [f"{self.installed} installed", f"{self.count('up-to-date')} already up to date",
                 f"{self.failed} failed"]
        for extra in ("offline", "not-started"):
            if self.count(extra):
                parts.append(f"{self.count(extra)} {extra.replace('-', ' ')}")
        text = (f"roll-out of {self.version} to {self.pattern}: {len(self.devices)} devices, "
                f"{', '.join(parts)} in {self.seconds:.1f} s")
        if self.stopped:
            text += f"; STOPPED: {self.stop_reason}; run the same command again to continue"
        elif self.count("offline"):
            # Exit status 1 too: a script must not take a partly updated fleet for a done one.
            text += "; INCOMPLETE: run the same command again when the offline devices are back"
        return text


def parse_canary(text: str | float | int) -> float:
    """``"10%"``, ``"10"`` or ``10`` -> 10.0 (percent of the devices to update first)."""
    raw = str(text).strip().rstrip("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise FlashError(f"canary {text!r}: expected a percentage like 10%") from None
    if not 0 <= value <= 100 or math.isnan(value):
        raise FlashError(f"canary {text!r}: expected a percentage between 0% and 100%")
    return value


# Id characters (A-Z a-z 0-9 _ . -) and fnmatch wildcards. Anything else can match no device
# (ids never hold it), so it is a typo better reported than answered with "no device matches".
_PATTERN_PART = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,64}")


def _normalise_pattern(pattern: str) -> str:
    parts = pattern.split("/") if isinstance(pattern, str) else []
    if not 1 <= len(parts) <= 2 or not all(_PATTERN_PART.fullmatch(p) for p in parts):
        raise FlashError(f"fleet pattern {pattern!r}: expected FLEET/DEVICE with shell wildcards, "
                         "e.g. 'site-a/*', each part made of A-Z a-z 0-9 _ . - and * ? [ ] !")
    return pattern if "/" in pattern else f"{pattern}/*"


def canary_count(percent: float, n: int) -> int:
    """How many of ``n`` devices are canaries: ``percent`` of them rounded up, at most ``n``.

    Exact arithmetic: in floats 7 / 100 * 100 is 7.000000000000001, which rounds up to 8.
    """
    if percent <= 0 or n <= 0:
        return 0
    # str() is the shortest repr, so 33.3 becomes exactly 333/10 rather than its binary value.
    return min(n, math.ceil(Fraction(str(percent)) * n / 100))


def discover(broker_url: str, pattern: str, wait_s: float = 3.0) -> list[Any]:
    """Devices matching ``pattern`` (fnmatch on ``fleet/device``) from their retained births.

    Returns:
        :class:`~edgemeta.fleet.DeviceState` objects sorted by fleet and device id. Waits until
        the retained messages stopped arriving (0.3 s of quiet), at most ``wait_s``.
    """
    from edgemeta.fleet import FleetMonitor
    from edgemeta.fleet.monitor import default_monitor_id

    pattern = _normalise_pattern(pattern)
    fleet_part = pattern.split("/")[0]
    literal = not any(c in fleet_part for c in "*?[")
    # One-shot: a stable per-host id whose retained host state is cleared again on stop, so
    # roll-outs leave nothing behind on the broker for every device to download.
    with FleetMonitor(broker_url, fleet_pattern=fleet_part if literal else "+",
                      host_id=default_monitor_id("rollout"), transient=True) as monitor:
        deadline = time.monotonic() + wait_s
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = monitor.message_count
            if n != seen:
                seen, quiet_since = n, time.monotonic()
            elif n > 0 and time.monotonic() - quiet_since > 0.3:
                break
            time.sleep(0.05)
        states = monitor.snapshot()
    return [s for s in states if fnmatch.fnmatchcase(f"{s.fleet}/{s.device_id}", pattern)]


def render_rollout(report: RolloutReport) -> Any:
    """A rich Table of the roll-out, one row per device."""
    from rich.table import Table
    from rich.text import Text

    colours = {"installed": "green", "up-to-date": "green", "failed": "red", "offline": "yellow",
               "not-started": "yellow"}
    table = Table(title=Text(f"roll-out of {report.version} to {report.pattern}"))
    for col in ("device", "phase", "state", "chunks", "before", "time", "detail"):
        table.add_column(col, justify="right" if col in ("chunks", "time") else "left")
    for d in report.devices:
        colour = colours.get(d.state, "cyan")
        detail = f"{d.reason}: {d.message}" if d.reason else (d.message or "")
        # Device-supplied strings as Text, never markup (a version "[/]" raises MarkupError).
        table.add_row(Text(d.name), d.phase, Text(d.state, style=colour),
                      f"{d.received}/{d.chunks}" if d.chunks else "",
                      Text(d.version_before or "-"),
                      f"{d.seconds:.1f} s" if d.seconds is not None else "",
                      Text(detail[:80]))
    return table


def _sync(d: DeviceOutcome) -> None:
    t = d.transfer
    if t is None:
        return
    d.received, d.chunks = t.received, t.offer.chunks
    d.seconds = t.seconds
    if t.done.is_set():
        d.state = "installed" if t.ok else "failed"
        d.reason, d.message = t.reason, t.message
        if t.ok and t.status is not None and not t.status.changed:
            # The board already ran it (its birth was stale): nothing was installed.
            d.state = "up-to-date"
    else:
        d.state = "sending" if t.state in ("offered", "need", "receiving") else t.state


def rollout(bundle_path: str | os.PathLike[str], broker_url: str, pattern: str, *,
            canary: str | float = "10%", max_failures: int = 0, parallel: int = 16,
            allow_downgrade: bool = False, timeout_s: float = 300.0, discover_s: float = 3.0,
            console: Any = None, engine_options: dict[str, Any] | None = None) -> RolloutReport:
    """Flash a bundle to every device matching ``pattern``: canary first, then the rest.

    Args:
        bundle_path: The ``.edgemeta`` file.
        broker_url: ``mqtt://host[:port]``.
        pattern: ``FLEET/DEVICE`` with shell wildcards, e.g. ``site-a/*`` (``site-a`` alone means
            ``site-a/*``).
        canary: Share of the devices to update first, e.g. ``"10%"`` (at least one device when
            above 0 %).
        max_failures: Stop starting new transfers once more devices than this have failed.
        parallel: Transfers in flight at once.
        timeout_s: Per-device deadline for transfer and install.
        discover_s: Longest wait for the fleet's retained births.
        console: A rich Console for a live per-device table; None for no output.
        engine_options: More keyword arguments for :class:`OtaEngine`.

    Returns:
        The :class:`RolloutReport`; devices that were offline or not reached are listed too,
        and make ``ok`` false (the roll-out is not complete until they run the bundle).

    Raises:
        FlashError: Bad bundle, pattern or canary; FleetError if the broker is unreachable.
    """
    started = time.monotonic()
    broker, url_fleet, url_device = split_mqtt_url(broker_url)
    if url_fleet or url_device:
        # The pattern chooses the devices; a device in the URL would silently be ignored.
        raise FlashError(f"target {broker_url!r} names a device: a --fleet roll-out takes the "
                         "broker only (mqtt://BROKER[:PORT]) and the devices from its pattern")
    data = read_bundle_bytes(bundle_path)
    try:
        manifest = read_bundle(data).manifest
    except BundleError as exc:
        raise FlashError(f"cannot roll out {bundle_path}: {exc}") from exc
    percent = parse_canary(canary)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise FlashError(f"max_failures {max_failures!r}: expected an integer >= 0")
    pattern = _normalise_pattern(pattern)
    found = discover(broker, pattern, discover_s)
    report = RolloutReport(manifest.version, pattern, [])
    targets: list[DeviceOutcome] = []
    for s in found:
        d = DeviceOutcome(s.fleet, s.device_id, version_before=s.model_version)
        if s.model_version == manifest.version and s.model_sha256 in (None, manifest.model_sha256):
            d.state = "up-to-date"
        elif s.state != "online":
            d.state, d.message = "offline", "the fleet reports it offline; not attempted"
        else:
            targets.append(d)
        report.devices.append(d)
    n_canary = canary_count(percent, len(targets))
    for i, d in enumerate(targets):
        d.phase = "canary" if i < n_canary else "rest"
    if not found:
        report.stop_reason = f"no device matches {pattern} (no retained birth seen)"

    live = None
    if console is not None:
        from rich.live import Live

        live = Live(render_rollout(report), console=console, refresh_per_second=4,
                    transient=False)
        live.start()
    engine = OtaEngine(broker, **(engine_options or {}))
    try:
        engine.start()
        for phase in ("canary", "rest"):
            group = [d for d in targets if d.phase == phase]
            if report.stopped or not group:
                continue
            _run_phase(engine, group, data, manifest.version, report, max_failures, parallel,
                       allow_downgrade, timeout_s, live)
    finally:
        engine.stop()
        for d in targets:
            _sync(d)
            if d.state == "waiting":
                d.state = "not-started"
        report.seconds = time.monotonic() - started
        report.wire_bytes = engine.wire_bytes
        if live is not None:
            live.update(render_rollout(report))
            live.stop()
            if not console.is_terminal:
                console.line()  # Live leaves the cursor after the table when not on a terminal
    return report


def _run_phase(engine: OtaEngine, group: list[DeviceOutcome], data: bytes, version: str,
               report: RolloutReport, max_failures: int, parallel: int, allow_downgrade: bool,
               timeout_s: float, live: Any) -> None:
    queue = list(group)
    running: list[DeviceOutcome] = []
    while queue or running:
        while queue and len(running) < max(1, parallel) and not report.stopped:
            d = queue.pop(0)
            d.transfer = engine.send(d.fleet, d.device, data, version=version,
                                     allow_downgrade=allow_downgrade, timeout_s=timeout_s)
            running.append(d)
        if not running:
            break
        engine.wait([d.transfer for d in running if d.transfer is not None], 0.25)
        for d in running:
            _sync(d)
        running = [d for d in running if d.state not in _DONE]
        failures = report.failed
        if failures > max_failures and not report.stopped:
            report.stopped = True
            report.stop_reason = (f"{failures} device(s) failed, more than --max-failures "
                                  f"{max_failures}")
        if live is not None:
            live.update(render_rollout(report))
