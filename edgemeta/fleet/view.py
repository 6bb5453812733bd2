"""Rich rendering of fleet state: a table and a live-updating watch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgemeta.errors import FleetError

if TYPE_CHECKING:
    # rich is imported lazily inside the functions: a board-side agent never renders tables.
    # The monitor types are only annotations here, which keeps monitor -> view acyclic.
    from rich.console import Console
    from rich.table import Table

    from edgemeta.fleet.monitor import DeviceState, FleetMonitor

__all__ = ["render_table", "watch"]


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ago(last_seen: float | None, now: float) -> str:
    if last_seen is None:
        return "never"
    age = max(0.0, now - last_seen)
    if age < 120:
        return f"{age:.0f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    return f"{age / 3600:.1f} h ago"


def render_table(states: list[DeviceState], now: float | None = None) -> Table:
    """Build a rich table of device states.

    Args:
        states: Usually ``monitor.snapshot()``.
        now: Reference time for "last seen" (unix seconds); defaults to ``time.time()``.

    Returns:
        A table with columns device, fleet, state, model, classes, inferences, p50 ms, p95 ms,
        accuracy, last seen.
    """
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title="edgemeta fleet", expand=False)
    for name, justify in (
        ("device", "left"), ("fleet", "left"), ("state", "left"), ("model", "left"),
        ("classes", "right"), ("inferences", "right"), ("p50 ms", "right"),
        ("p95 ms", "right"), ("accuracy", "right"), ("last seen", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for st in states:
        if st.state == "online":
            state = "[green]online[/green]"
        else:
            why = f" ({st.death_reason})" if st.death_reason else ""
            state = f"[red]offline{why}[/red]"
        acc = "-" if st.accuracy is None else f"{st.accuracy:.1%} / {st.evaluated}"
        table.add_row(
            st.device_id, st.fleet, state, st.model_version or "-", str(st.n_classes),
            _fmt(st.inference_count, "d"), _fmt(st.latency_p50_ms, ".2f"),
            _fmt(st.latency_p95_ms, ".2f"), acc, _ago(st.last_seen, now),
        )
    return table


def watch(
    monitor: FleetMonitor,
    console: Console | None = None,
    refresh_s: float = 1.0,
    duration_s: float | None = None,
) -> None:
    """Show a live-updating table of ``monitor`` until ``duration_s`` passes or Ctrl-C.

    Args:
        monitor: A started :class:`FleetMonitor`.
        console: Rich console to draw on; a new one by default.
        refresh_s: Seconds between redraws (> 0).
        duration_s: Stop after this many seconds; None runs until KeyboardInterrupt.
    """
    from rich.console import Console
    from rich.live import Live

    if not refresh_s > 0:
        raise FleetError(f"refresh_s must be a positive number of seconds, got {refresh_s!r}")
    console = console or Console()
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        with Live(render_table(monitor.snapshot()), console=console, auto_refresh=False) as live:
            while end is None or time.monotonic() < end:
                step = refresh_s if end is None else min(refresh_s, max(0.0, end - time.monotonic()))
                time.sleep(step)
                live.update(render_table(monitor.snapshot()), refresh=True)
    except KeyboardInterrupt:
        # Ctrl-C is the normal way to leave an unbounded watch; not an error.
        pass
