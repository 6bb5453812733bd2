"""Bundles and boards: inspect, boards, check, flash (dir, ssh, mqtt), rollback, export c."""

from __future__ import annotations

import sys
from typing import Any

import click

from edgemeta.cli._base import cli


def _mqtt_options(command: Any) -> Any:
    """The options of over-the-air flashing (mqtt:// targets), for ``flash``."""
    for option in reversed([
        click.option("--device", default=None,
                     help="mqtt:// only: the device id to flash over the air."),
        click.option("--fleet-name", default=None,
                     help="mqtt:// only: the fleet of --device [default: default]."),
        click.option("--fleet", "fleet_pattern", default=None, metavar="PATTERN",
                     help="mqtt:// only: roll out to every device matching FLEET/DEVICE "
                          "wildcards, e.g. 'site-a/*' (known from their retained births)."),
        click.option("--canary", default="10%", show_default=True,
                     help="--fleet: share of the devices flashed first."),
        click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
                     help="--fleet: stop once more devices than this have failed."),
        click.option("--parallel", type=click.IntRange(min=1), default=16, show_default=True,
                     help="--fleet: transfers at once."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0,
                     show_default=True, help="mqtt:// only: seconds per device."),
    ]):
        command = option(command)
    return command


def _flash_mqtt(bundle: str, url: str, board: str | None, *, device: str | None,
                fleet_name: str | None, fleet_pattern: str | None, canary: str,
                max_failures: int, parallel: int, timeout: float,
                allow_downgrade: bool = False) -> None:
    """``flash --to mqtt://...``: one device (--device) or a canary-first roll-out (--fleet)."""
    if url.lower().startswith(("mqtt:", "mqtts:")) \
            and not url.lower().startswith(("mqtt://", "mqtts://")):
        raise click.UsageError(f"--to {url}: expected mqtt://BROKER[:PORT] or "
                               "mqtts://BROKER[:PORT] (with the two slashes)")
    if not url.lower().startswith(("mqtt://", "mqtts://")):
        raise click.UsageError("--device, --fleet-name and --fleet apply only to mqtt:// and "
                               "mqtts:// targets")
    if device and fleet_pattern:
        raise click.UsageError("give --device ID (one board) or --fleet PATTERN (a roll-out), "
                               "not both")
    # An option that would be dropped silently is refused: the operator believes it applied.
    if fleet_pattern and fleet_name:
        raise click.UsageError("--fleet-name applies to --device; with --fleet, put the fleet in "
                               "the pattern, e.g. --fleet 'site-a/*'")
    if not fleet_pattern:
        from click.core import ParameterSource

        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ("canary", "max_failures", "parallel")
                 if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise click.UsageError(f"{', '.join(given)} {verb} only to a roll-out "
                                   "(--fleet PATTERN), not to one --device")
    from firmware_bridge.install import preflight

    preflight(bundle, board)  # nothing leaves the workstation that cannot work
    if fleet_pattern:
        from rich.console import Console

        from firmware_bridge.ota.rollout import rollout

        report = rollout(bundle, url, fleet_pattern, canary=canary, max_failures=max_failures,
                         parallel=parallel, timeout_s=timeout, console=Console(),
                         allow_downgrade=allow_downgrade)
        click.echo(report.summary())
        if not report.ok:
            sys.exit(1)
        return
    from firmware_bridge.ota import MqttTransport

    transport = MqttTransport(url, device=device, fleet=fleet_name, timeout_s=timeout,
                              answer_timeout_s=min(10.0, timeout))
    r = transport.push(bundle, allow_downgrade=allow_downgrade)
    where = f"{transport.fleet}/{transport.device}"
    if r.changed:
        click.echo(f"installed {r.version} on {where} over MQTT "
                   f"(previous: {r.previous_version or 'none'})")
    else:
        click.echo(f"{r.version} is already installed and current on {where}")


# ---------------------------------------------------------------- bundle, boards
@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
def inspect(bundle: str) -> None:
    """Verify a bundle and print its manifest."""
    from edgemeta.bundle import read_bundle

    click.echo(read_bundle(bundle).manifest.to_json())


@cli.command("boards")
def boards_cmd() -> None:
    """List the board profiles."""
    from edgemeta.boards import list_boards

    boards = list_boards()
    width = max([18, *(len(b.name) for b in boards)])
    for b in boards:
        if b.is_mcu:  # no Python: SRAM and flash budgets instead (see 'edgemeta export c')
            click.echo(f"{b.name:<{width}} {b.arch:<8} {b.ram_kb:>6} KB  flash {b.flash_kb} KB  "
                       f"{b.runtime:<16} {b.title}")
            continue
        click.echo(f"{b.name:<{width}} {b.arch:<8} {b.ram_mb:>6} MB  python {b.python:<5} "
                   f"{b.runtime:<16} {b.title}")


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--board", required=True, help="Board profile name (see 'edgemeta boards').")
@click.option("--python", "python_version", default=None, metavar="X.Y",
              help="The board's Python, if not the profile's (e.g. 3.13 after an OS upgrade).")
def check(bundle: str, board: str, python_version: str | None) -> None:
    """Say whether, and why, a bundle fits a board. Exit status 1 if it does not."""
    from edgemeta.boards import check_bundle, get_board
    from edgemeta.bundle import read_bundle

    loaded = read_bundle(bundle)
    # The model bytes let a microcontroller check measure the tensor arena (ignored otherwise).
    result = check_bundle(loaded.manifest, get_board(board), python_version, model=loaded.model)
    for c in result.checks:
        click.echo(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    click.echo(result.summary())
    if not result.fits:
        sys.exit(1)


def _ssh_options(command: Any) -> Any:
    """The options that reach ssh:// targets, shared by ``flash`` and ``rollback``."""
    for option in reversed([
        click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="ssh:// only: ssh_config file to use instead of ~/.ssh/config (ssh -F)."),
        click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
                     help="ssh:// only: extra ssh -o option, e.g. IdentityFile=~/.ssh/pi; "
                          "repeatable."),
        click.option("--remote-python", default=None,
                     help="ssh:// only: the board's Python that has edgemeta [default: python3, "
                          "or ?python= in the URL]."),
    ]):
        command = option(command)
    return command


def _target(url: str, ssh_config: str | None, ssh_options: tuple[str, ...],
            remote_python: str | None) -> Any:
    """The transport for ``--to URL``, with the ssh options applied to ssh:// targets."""
    from firmware_bridge import SSHTransport, transport_for

    target = transport_for(url)
    if isinstance(target, SSHTransport):
        return SSHTransport.from_url(url, ssh_config=ssh_config, ssh_options=ssh_options,
                                     remote_python=remote_python)
    if ssh_config or ssh_options or remote_python:
        raise click.UsageError("--ssh-config, --ssh-option and --remote-python apply only to "
                               "ssh:// targets")
    return target


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--to", "url", required=True,
              help="Where to flash: dir:PATH (a board home or SD card), "
                   "ssh://USER@HOST[:PORT]/PATH (a board with edgemeta installed) or "
                   "mqtt://BROKER[:PORT] with --device or --fleet (over the air).")
@click.option("--board", default=None, help="Check compatibility with this board profile first.")
@click.option("--allow-downgrade", is_flag=True,
              help="Install even if the bundle is older than the board's current version.")
@_ssh_options
@_mqtt_options
def flash(bundle: str, url: str, board: str | None, allow_downgrade: bool,
          ssh_config: str | None, ssh_options: tuple[str, ...], remote_python: str | None,
          **ota: Any) -> None:
    """Install a bundle on a board: verified, switched atomically, previous version kept."""
    if url.lower().startswith(("mqtt:", "mqtts:")) or ota["device"] or ota["fleet_pattern"] \
            or ota["fleet_name"]:
        if ssh_config or ssh_options or remote_python:  # silently dropped otherwise
            raise click.UsageError("--ssh-config, --ssh-option and --remote-python apply only to "
                                   "ssh:// targets")
        return _flash_mqtt(bundle, url, board, allow_downgrade=allow_downgrade, **ota)
    if board is not None:  # a microcontroller gets the model via 'edgemeta export c' instead
        from edgemeta.boards import get_board, require_flashable

        require_flashable(get_board(board))
    from firmware_bridge import SSHTransport
    from firmware_bridge import flash as do_flash

    target = _target(url, ssh_config, ssh_options, remote_python)
    r = do_flash(bundle, target, board=board, allow_downgrade=allow_downgrade)
    # r.path is a path on the board: say which board for remote targets.
    where = f"{target.destination}:{r.path}" if isinstance(target, SSHTransport) else str(r.path)
    if r.changed:
        click.echo(f"installed {r.version} at {where} (previous: {r.previous_version or 'none'})")
    else:
        click.echo(f"{r.version} is already installed and current at {where}")


@cli.command()
@click.option("--to", "url", required=True,
              help="The board: dir:PATH or ssh://USER@HOST[:PORT]/PATH.")
@_ssh_options
def rollback(url: str, ssh_config: str | None, ssh_options: tuple[str, ...],
             remote_python: str | None) -> None:
    """Make a board's previous model current again (twice: back where you started)."""
    from firmware_bridge import DirTransport
    from firmware_bridge import rollback as do_rollback

    if url.lower().startswith(("mqtt:", "mqtts:")):  # the device's agent does it on command
        raise click.UsageError(f"{url}: rollback over MQTT is a command to the device's agent: "
                               "edgemeta fleet cmd --broker BROKER --fleet FLEET --device ID "
                               "rollback")
    target = _target(url, ssh_config, ssh_options, remote_python)
    if isinstance(target, DirTransport):
        version = do_rollback(target.home)
    elif hasattr(target, "rollback"):
        version = target.rollback()
    else:
        raise click.UsageError(f"{url}: rollback is not supported over this transport")
    click.echo(f"rolled back: {version} is current on {target.url}")


@cli.group("export")
def export_group() -> None:
    """Export a bundle for targets that cannot run a bundle file (microcontrollers)."""


@export_group.command("c")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for NAME.h and NAME.cc (created if missing).")
@click.option("--name", default="model_data", show_default=True,
              help="File and symbol base name: g_NAME[], g_NAME_len, NAME_ARENA_SIZE, ...")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the written bytes under TFLite Micro and LiteRT; outputs must agree "
                   "within 2 LSB (needs tflite-micro: pip install 'edgemeta[mcu]').")
def export_c_cmd(bundle: str, out_dir: str, name: str, verify: bool) -> None:
    """Write the model as C source for TensorFlow Lite for Microcontrollers (ESP32, nRF52, ...)."""
    from edgemeta.errors import MissingDependencyError
    from firmware_bridge.mcu import export_c, verify_c_export

    # Verifying needs tflite-micro anyway, so then also measure the arena rather than estimate it.
    try:
        e = export_c(bundle, out_dir, name=name, arena="measure" if verify else "auto")
    except MissingDependencyError as exc:  # tflite-micro: Linux x86_64 wheels only
        raise MissingDependencyError(f"{exc}; or pass --no-verify to export with an estimated "
                                     "arena and no check") from exc
    click.echo(f"wrote {e.header} and {e.source} ({e.version}, sha256 {e.sha256[:12]}...)")
    click.echo(f"ops ({len(e.ops)}): {', '.join(e.ops)}")
    click.echo(f"tensor arena: {e.arena.describe()}")
    click.echo(f"needs {len(e.model_bytes):,} bytes of flash for the model and "
               f"{e.arena_bytes:,} bytes of RAM for the arena "
               "(see 'edgemeta check BUNDLE --board esp32-s3')")
    if verify:
        v = verify_c_export(e)
        click.echo(f"verified: TFLite Micro and {v.backend} agree within {v.max_abs_diff} LSB "
                   f"on {v.samples} inputs (tolerance {v.tolerance}) with the exported arena")
