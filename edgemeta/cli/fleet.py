"""Fleet commands: the host monitor."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edgemeta.cli._base import cli

_F = TypeVar("_F", bound=Callable[..., Any])


# ---------------------------------------------------------------- fleet
@cli.group()
def fleet() -> None:
    """Watch the fleet from the host: live table, JSON status, Prometheus exporter."""


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Reject zero, negatives and NaN by the option's own name, before any broker is contacted
    (the library's checks come later and name its parameters, e.g. ``offline_after_s``)."""
    if value is not None and not value > 0:
        raise click.BadParameter(f"expected a positive number, got {value!r}")
    return value


def _monitor_options(f: _F) -> _F:
    """Options shared by watch, status and exporter (applied bottom-up by click)."""
    options = [
        click.option("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://...)"),
        click.option("--fleet", "pattern", default="+", show_default=True,
                     help="Fleet id, '+' for all, or a shell pattern such as 'site-*'."),
        click.option("--offline-after", default=30.0, show_default=True,
                     callback=_positive,
                     help="Seconds of silence before a device whose cadence is unknown is "
                     "offline."),
        click.option("--missed-intervals", default=3.0, show_default=True,
                     callback=_positive,
                     help="A device silent for this many telemetry intervals is offline."),
        click.option("--latency-factor", default=2.0, show_default=True,
                     callback=_positive,
                     help="Alert when a device's p50 exceeds this multiple of the fleet median."),
        click.option("--host-id", default=None,
                     help="Id of this monitor in its retained host state (default: "
                     "watch-/status-/exporter-HOSTNAME). Give concurrent monitors of one "
                     "machine different ids."),
        click.option("--max-devices", type=click.IntRange(min=1), default=100_000,
                     show_default=True,
                     help="Most devices tracked; messages of further devices are counted "
                     "(overflow) and ignored."),
        click.option("--mqtt5/--mqtt311", default=None,
                     help="MQTT version (default: 5 with --share-group, else 3.1.1). MQTT 5 "
                     "lets the broker send bursts without its per-client queue limit."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _open_monitor(broker: str, pattern: str, offline_after: float, missed_intervals: float,
                  latency_factor: float, host_id: str | None, mqtt5: bool | None,
                  max_devices: int, role: str, share_group: str | None = None) -> Any:
    """A FleetMonitor for a fleet id, '+', or a glob (which subscribes to all fleets).

    The host id defaults to ``<role>-<hostname>``: stable, so runs do not pile up retained host
    states on the broker, and distinct per command, so a ``fleet status`` does not announce a
    running ``fleet watch`` of the same machine offline. ``status`` is one-shot: it clears its
    retained host state on a clean stop.
    """
    from edgemeta.fleet import FleetMonitor
    from edgemeta.fleet.alerts import AlertConfig
    from edgemeta.fleet.monitor import default_monitor_id

    glob = any(c in pattern for c in "*?[")
    cfg = AlertConfig(missed_intervals=missed_intervals, latency_factor=latency_factor,
                      offline_after_s=offline_after)
    return FleetMonitor(broker, fleet_pattern="+" if glob else pattern,
                        offline_after_s=offline_after, alert_config=cfg,
                        host_id=host_id or default_monitor_id(role), share_group=share_group,
                        mqtt5=mqtt5, transient=role == "status", max_devices=max_devices)


def _fleet_glob(pattern: str) -> str | None:
    """The local filter for a --fleet glob ('site-*' -> 'site-*/*'), or None for an id or '+'."""
    return f"{pattern}/*" if any(c in pattern for c in "*?[") else None


@fleet.command("watch")
@_monitor_options
@click.option("--sort", type=click.Choice(["state", "device", "latency", "last-seen", "version"]),
              default="device", show_default=True)
@click.option("--filter", "filter_", default=None,
              help="Shell pattern on FLEET/DEVICE or the device id, e.g. 'pi-0*'.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Show at most this many rows.")
@click.option("--share-group", default=None,
              help="Join this MQTT shared-subscription group (several monitors split the load).")
@click.option("--refresh", default=1.0, show_default=True, callback=_positive,
              help="Seconds between redraws.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def fleet_watch(broker: str, pattern: str, offline_after: float, missed_intervals: float,
                latency_factor: float, host_id: str | None, max_devices: int,
                mqtt5: bool | None, sort: str,
                filter_: str | None,
                limit: int | None, share_group: str | None, refresh: float,
                duration: float | None) -> None:
    """A live table of the fleet with alerts (Ctrl-C to stop)."""
    from rich.console import Console

    from edgemeta.fleet import watch

    glob = _fleet_glob(pattern)
    if glob is not None and filter_ is not None:
        raise click.UsageError("give --filter or a --fleet pattern, not both")
    with _open_monitor(broker, pattern, offline_after, missed_intervals, latency_factor,
                       host_id, mqtt5, max_devices, "watch", share_group) as monitor:
        watch(monitor, Console(), refresh_s=refresh, duration_s=duration, sort=sort,
              pattern=glob or filter_, limit=limit)


@fleet.command("status")
@_monitor_options
@click.option("--wait", default=2.0, show_default=True,
              help="Seconds to collect retained and live messages before answering.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: devices, alerts, monitor counters.")
def fleet_status(broker: str, pattern: str, offline_after: float, missed_intervals: float,
                 latency_factor: float, host_id: str | None, max_devices: int,
                 mqtt5: bool | None, wait: float,
                 as_json: bool) -> None:
    """The fleet's state once, as a table or JSON."""
    import time

    from rich.console import Console

    from edgemeta.fleet import render_table
    from edgemeta.fleet.view import filter_states

    glob = _fleet_glob(pattern)
    with _open_monitor(broker, pattern, offline_after, missed_intervals, latency_factor,
                       host_id, mqtt5, max_devices, "status") as monitor:
        time.sleep(max(0.0, wait))
        if as_json:
            status = monitor.status_dict()
            if glob is not None:
                keep = {(s.fleet, s.device_id) for s in filter_states(monitor.snapshot(), glob)}
                status["devices"] = [d for d in status["devices"]
                                     if (d["fleet"], d["device_id"]) in keep]
                status["alerts"] = [a for a in status["alerts"]
                                    if (a["fleet"], a["device"]) in keep]
            click.echo(json.dumps(status, indent=2, sort_keys=True))
        else:
            states = monitor.snapshot()
            Console().print(render_table(states, alerts=monitor.alerts(states), pattern=glob))


@fleet.command("exporter")
@_monitor_options
@click.option("--port", type=click.IntRange(0, 65535), required=True,
              help="HTTP port of /metrics (0: any free port).")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="Bind address; 0.0.0.0 lets a Prometheus on another host scrape it.")
@click.option("--share-group", default=None,
              help="Join this MQTT shared-subscription group (several exporters split the load).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def fleet_exporter(broker: str, pattern: str, offline_after: float, missed_intervals: float,
                   latency_factor: float, host_id: str | None, max_devices: int,
                   mqtt5: bool | None, port: int,
                   addr: str,
                   share_group: str | None, duration: float | None) -> None:
    """Serve the fleet's state as Prometheus metrics on http://ADDR:PORT/metrics."""
    import time

    from edgemeta.fleet.exporter import serve_metrics

    if _fleet_glob(pattern) is not None:
        raise click.UsageError("--fleet for the exporter is a fleet id or '+'; use Prometheus "
                               "label matchers to select fleets")
    with _open_monitor(broker, pattern, offline_after, missed_intervals, latency_factor,
                       host_id, mqtt5, max_devices, "exporter", share_group) as monitor:
        server = serve_metrics(monitor, port, host=addr)
        click.echo(f"serving {server.url} (host id {monitor.host_id})", err=True)
        end = None if duration is None else time.monotonic() + duration
        try:
            while end is None or time.monotonic() < end:
                time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how an operator stops it
        finally:
            server.stop()


# ---------------------------------------------------------------- fleet cmd
@fleet.group("cmd")
@click.option("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://...)")
@click.option("--fleet", "fleet_id", required=True, help="Fleet of the device.")
@click.option("--device", required=True, help="Device id.")
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds to wait for the device's reply.")
@click.option("--host-id", default=None, help="Sender name carried by the command "
              "(default: this host's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole reply as JSON.")
@click.pass_context
def fleet_cmd(ctx: click.Context, broker: str, fleet_id: str, device: str, timeout: float,
              host_id: str | None, as_json: bool) -> None:
    """Send one command to a device and print its reply; exit status 1 if it was refused."""
    ctx.obj = {"broker": broker, "fleet": fleet_id, "device": device, "timeout": timeout,
               "host_id": host_id, "as_json": as_json}


def _send(opts: dict, command: str, args: dict | None = None,
          files: tuple[str, ...] = ()) -> None:
    """Call the device, print the reply, and exit 1 when it says ok=false."""
    from dataclasses import asdict

    from edgemeta.fleet.commander import FleetCommander
    from edgemeta.fleet.view import printable

    with FleetCommander(opts["broker"], host_id=opts["host_id"]) as commander:
        reply = commander.call(opts["fleet"], opts["device"], command, args,
                               timeout_s=opts["timeout"])
    who = f"{reply.fleet}/{reply.device_id}"
    if opts["as_json"]:
        click.echo(json.dumps(asdict(reply), indent=2, sort_keys=True))
    elif not reply.ok:
        # Device-supplied text: escaped, so a device cannot send escapes to the terminal.
        click.echo(f"{who}: {command} refused: {printable(str(reply.error))}", err=True)
    elif command == "classify":
        for name, p in zip(files, (reply.result or {}).get("predictions", [])):
            click.echo(f"{name}: {printable(str(p.get('label')))} "
                       f"({printable(str(p.get('score')))})")
    else:  # json.dumps escapes every control character (ensure_ascii)
        click.echo(f"{who}: {command} ok: {json.dumps(reply.result, sort_keys=True)}")
    if not reply.ok:
        click.get_current_context().exit(1)


_IMAGE = click.Path(exists=True, dir_okay=False)


@fleet_cmd.command("enroll")
@click.argument("label")
@click.argument("images", nargs=-1, required=True, type=_IMAGE)
@click.pass_obj
def fleet_cmd_enroll(opts: dict, label: str, images: tuple[str, ...]) -> None:
    """Enroll LABEL on the device from IMAGES (PNG/JPEG; others are sent as PNG)."""
    from edgemeta.fleet.commander import encode_images

    _send(opts, "enroll", {"label": label, "images": encode_images(images)})


@fleet_cmd.command("forget")
@click.argument("label")
@click.pass_obj
def fleet_cmd_forget(opts: dict, label: str) -> None:
    """Remove LABEL from the device's enrolled classes."""
    _send(opts, "forget", {"label": label})


@fleet_cmd.command("classify")
@click.argument("images", nargs=-1, required=True, type=_IMAGE)
@click.pass_obj
def fleet_cmd_classify(opts: dict, images: tuple[str, ...]) -> None:
    """Classify IMAGES on the device; prints one prediction per image."""
    from edgemeta.fleet.commander import encode_images

    _send(opts, "classify", {"images": encode_images(images)}, files=images)


@fleet_cmd.command("report")
@click.pass_obj
def fleet_cmd_report(opts: dict) -> None:
    """Make the device publish telemetry now."""
    _send(opts, "report")


@fleet_cmd.command("rebirth")
@click.pass_obj
def fleet_cmd_rebirth(opts: dict) -> None:
    """Make the device publish its birth again."""
    _send(opts, "rebirth")


@fleet_cmd.command("rollback")
@click.pass_obj
def fleet_cmd_rollback(opts: dict) -> None:
    """Make the device's previous model current again."""
    _send(opts, "rollback")


# ---------------------------------------------------------------- fleet simulate
@fleet.command("simulate")
@click.option("--broker", required=True, help="mqtt://HOST:PORT (plain MQTT)")
@click.option("--devices", type=click.IntRange(min=1), required=True,
              help="Number of simulated devices, one MQTT connection each.")
@click.option("--rate", type=float, default=1.0, show_default=True,
              help="Telemetry messages per second per device.")
@click.option("--seconds", type=float, default=None,
              help="Length of the telemetry window (default: until Ctrl-C).")
@click.option("--fleet", "fleet_id", default="sim", show_default=True, help="Fleet id.")
@click.option("--prefix", default="sim", show_default=True, help="Device id prefix.")
def fleet_simulate(broker: str, devices: int, rate: float, seconds: float | None,
                   fleet_id: str, prefix: str) -> None:
    """Simulate DEVICES boards from this process (one event loop) and print a summary line."""
    from edgemeta.fleet.simulate import FleetSimulator

    sim = FleetSimulator(broker, devices=devices, rate_hz=rate, fleet=fleet_id, prefix=prefix)
    with sim:  # stop() publishes the graceful deaths, also after Ctrl-C or an error
        st = sim.stats
        click.echo(f"connected {st.connected}/{devices} devices in {st.connect_time_s:.2f} s"
                   + (f"; {st.connect_failures} failed: {'; '.join(st.connect_errors[:3])}"
                      if st.connect_failures else ""), err=True)
        sim.run(float("inf") if seconds is None else seconds)
        sim.drain(10.0)
    click.echo(sim.stats.summary())
