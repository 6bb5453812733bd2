"""Rich rendering of fleet state: a sortable, filterable table and a live-updating watch."""

from __future__ import annotations

import fnmatch
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edgemeta.errors import FleetError

if TYPE_CHECKING:
    # rich is imported lazily inside the functions: a board-side agent never renders tables.
    # The monitor types are only annotations here, which keeps monitor -> view acyclic.
    from rich.console import Console
    from rich.table import Table

    from edgemeta.fleet.alerts import Alert
    from edgemeta.fleet.monitor import FleetMonitor
    from edgemeta.fleet.tracker import DeviceState

__all__ = ["COLUMNS", "SORT_KEYS", "filter_states", "printable", "render_table", "sort_states",
           "watch"]

COLUMNS = ("device", "fleet", "state", "seen", "model", "classes", "inf/s", "p50/p95 ms",
           "accuracy", "alerts")
_RIGHT = {"classes", "inf/s", "p50/p95 ms", "accuracy", "seen"}
# Device ids never wrap (they are what a reader looks for); on a narrow terminal rich wraps the
# other columns instead.
_NO_WRAP = {"device"}
# Short state words keep the table narrow: why a device is offline is the most useful part.
_OFFLINE_WORD = {"graceful": "stopped", "lost": "lost", None: "silent"}
_NEVER = float("-inf")
# C0/C1 control characters and DEL (ESC starts terminal sequences: window title, clear screen,
# and worse on some terminals; CR overwrites what was printed) and the bidi overrides that
# reorder what a reader sees. rich drops some control characters but passes ESC through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), safe for a terminal.

    Everything a device sends (model version, reply errors, labels) goes through this before
    it is printed: anyone allowed to publish as a device must not drive the operator's terminal.
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _by_state(s: DeviceState) -> Any:
    return (s.state == "online", s.fleet, s.device_id)  # offline first: what needs attention


def _by_latency(s: DeviceState) -> Any:
    # Slowest first; devices without a latency last.
    p50 = s.latency_p50_ms
    return (p50 is None, -(p50 or 0.0), s.fleet, s.device_id)


def _by_last_seen(s: DeviceState) -> Any:
    # Longest silent first: never-seen devices, then the oldest last_seen.
    return (_NEVER if s.last_seen is None else s.last_seen, s.fleet, s.device_id)


_DIGITS = re.compile(r"([0-9]+)")


def _version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: 1.9.0 < 1.10.0 (as text, "1.10.0" < "1.9.0" put the newest in between).

    Runs of digits compare as numbers by (length, digits) without leading zeros, never via
    ``int()``: a device-supplied version may hold more digits than ``int()`` converts.
    """
    key = []
    for part in _DIGITS.split(version):
        if not part:
            continue
        if part[0].isascii() and part[0].isdigit():
            digits = part.lstrip("0")
            key.append((0, len(digits), digits))
        else:
            key.append((1, 0, part))
    return tuple(key)


def _by_version(s: DeviceState) -> Any:
    v = s.model_version
    return (v is None, _version_key(v or ""), v or "", s.fleet, s.device_id)


SORT_KEYS: dict[str, Callable[[DeviceState], Any]] = {
    "state": _by_state,
    "device": lambda s: (s.fleet, s.device_id),
    "latency": _by_latency,
    "last-seen": _by_last_seen,
    "version": _by_version,
}


def sort_states(states: Sequence[DeviceState], sort: str = "device") -> list[DeviceState]:
    """Order states by one of :data:`SORT_KEYS`.

    Raises:
        FleetError: For an unknown sort key.
    """
    key = SORT_KEYS.get(sort)
    if key is None:
        raise FleetError(f"unknown sort {sort!r}: expected one of {', '.join(SORT_KEYS)}")
    return sorted(states, key=key)


def filter_states(states: Sequence[DeviceState], pattern: str | None) -> list[DeviceState]:
    """Keep states whose ``<fleet>/<device>`` or device id matches a shell-style pattern.

    A pattern without ``/`` is tried against both, so ``pi-*`` and ``site-a/*`` both work; None or
    an empty pattern keeps everything.
    """
    if not pattern:
        return list(states)
    return [s for s in states if fnmatch.fnmatchcase(f"{s.fleet}/{s.device_id}", pattern)
            or ("/" not in pattern and fnmatch.fnmatchcase(s.device_id, pattern))]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ago(last_seen: float | None, now: float) -> str:
    if last_seen is None:
        return "never"
    age = max(0.0, now - last_seen)
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.1f}h ago"


def render_table(
    states: Sequence[DeviceState],
    now: float | None = None,
    alerts: Sequence[Alert] = (),
    sort: str = "device",
    pattern: str | None = None,
    limit: int | None = None,
) -> Table:
    """Build a rich table of device states.

    Args:
        states: Usually ``monitor.snapshot()``.
        now: Reference time for "last seen" (unix seconds); defaults to ``time.time()``.
        alerts: Alerts to show per device (``monitor.alerts()``).
        sort: One of :data:`SORT_KEYS`.
        pattern: Shell-style filter on ``<fleet>/<device>`` or the device id.
        limit: Show at most this many rows (the caption says how many were left out).

    Returns:
        A table with the columns of :data:`COLUMNS`.

    Raises:
        FleetError: For an unknown sort key.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    shown = sort_states(filter_states(states, pattern), sort)
    by_device: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a in alerts:
        by_device[(a.fleet, a.device)].append(a.kind)
    online = sum(1 for s in shown if s.state == "online")
    n_alerts = sum(len(by_device[(s.fleet, s.device_id)]) for s in shown)
    caption = f"{len(shown)} devices, {online} online, {n_alerts} alerts"
    if limit is not None and len(shown) > limit:
        caption += f"; first {limit} shown"
        shown = shown[:limit]
    table = Table(title="edgemeta fleet", caption=caption, expand=False, box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for name in COLUMNS:
        # fold, not the default ellipsis: a wrapped version number is still readable.
        table.add_column(name, justify="right" if name in _RIGHT else "left",
                         no_wrap=name in _NO_WRAP, overflow="fold")
    for st in shown:
        if st.state == "online":
            state = "[green]online[/green]"
        else:
            state = f"[red]{_OFFLINE_WORD.get(st.death_reason, 'offline')}[/red]"
        acc = "-" if st.accuracy is None else f"{st.accuracy:.1%}/{st.evaluated}"
        lat = "-" if st.latency_p50_ms is None else \
            f"{st.latency_p50_ms:.2f}/{_fmt(st.latency_p95_ms, '.2f')}"
        kinds = by_device.get((st.fleet, st.device_id), [])
        # Device-supplied strings go in as Text, never as markup: a model version "[/]" would
        # raise MarkupError and "[blink]" would restyle the table.
        table.add_row(
            Text(st.device_id), Text(st.fleet), state, _ago(st.last_seen, now),
            Text(printable(st.model_version or "-")), str(st.n_classes), _fmt(st.inference_rate, ".1f"),
            lat, acc, Text(", ".join(kinds), style="yellow"),
        )
    return table


def watch(
    monitor: FleetMonitor,
    console: Console | None = None,
    refresh_s: float = 1.0,
    duration_s: float | None = None,
    sort: str = "device",
    pattern: str | None = None,
    limit: int | None = None,
) -> None:
    """Show a live-updating table of ``monitor`` until ``duration_s`` passes or Ctrl-C.

    Args:
        monitor: A started :class:`FleetMonitor`.
        console: Rich console to draw on; a new one by default.
        refresh_s: Seconds between redraws (> 0).
        duration_s: Stop after this many seconds; None runs until KeyboardInterrupt.
        sort: One of :data:`SORT_KEYS`.
        pattern: Shell-style filter on ``<fleet>/<device>`` or the device id.
        limit: Show at most this many rows.

    Raises:
        FleetError: For a non-positive ``refresh_s`` or an unknown sort key.
    """
    from rich.console import Console
    from rich.live import Live

    if not refresh_s > 0:
        raise FleetError(f"refresh_s must be a positive number of seconds, got {refresh_s!r}")
    if sort not in SORT_KEYS:
        raise FleetError(f"unknown sort {sort!r}: expected one of {', '.join(SORT_KEYS)}")
    console = console or Console()

    def frame() -> Table:
        states = monitor.snapshot()
        return render_table(states, alerts=monitor.alerts(states), sort=sort, pattern=pattern,
                            limit=limit)

    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while end is None or time.monotonic() < end:
                step = refresh_s if end is None else min(refresh_s, max(0.0, end - time.monotonic()))
                time.sleep(step)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        # Ctrl-C is the normal way to leave an unbounded watch; not an error.
        pass
