"""Fleet commands: the host monitor."""

from __future__ import annotations

import json

import click

from edgemeta.cli._base import cli


# ---------------------------------------------------------------- fleet
@cli.group()
def fleet() -> None:
    """Watch the fleet from the host."""


@fleet.command("watch")
@click.option("--broker", required=True, help="mqtt://HOST:PORT")
@click.option("--fleet", "pattern", default="+", show_default=True, help="Fleet name or '+' for all.")
@click.option("--refresh", default=1.0, show_default=True)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def fleet_watch(broker: str, pattern: str, refresh: float, duration: float | None) -> None:
    """A live table of the fleet (Ctrl-C to stop)."""
    from rich.console import Console

    from edgemeta.fleet import FleetMonitor, watch

    with FleetMonitor(broker, fleet_pattern=pattern) as monitor:
        watch(monitor, Console(), refresh_s=refresh, duration_s=duration)


@fleet.command("status")
@click.option("--broker", required=True, help="mqtt://HOST:PORT")
@click.option("--fleet", "pattern", default="+", show_default=True)
@click.option("--wait", default=2.0, show_default=True,
              help="Seconds to collect retained and live messages before answering.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fleet_status(broker: str, pattern: str, wait: float, as_json: bool) -> None:
    """The fleet's state once, as a table or JSON."""
    import time

    from rich.console import Console

    from edgemeta.fleet import FleetMonitor, render_table

    with FleetMonitor(broker, fleet_pattern=pattern) as monitor:
        time.sleep(max(0.0, wait))
        if as_json:
            click.echo(json.dumps(monitor.status_dict(), indent=2, sort_keys=True))
        else:
            Console().print(render_table(monitor.snapshot()))
