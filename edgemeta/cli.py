"""The ``edgemeta`` command line. Thin: every command calls into the packages.

Host-side imports (TensorFlow) happen inside the commands that need them, so board commands such
as ``edgemeta device run`` start without TensorFlow.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from edgemeta import __version__
from edgemeta.errors import EdgemetaError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turns every EdgemetaError into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgemetaError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgemeta")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """edgemeta: few-shot models from a workstation to a fleet of edge boards."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- host: train, convert
@cli.command()
@click.option("--data", "source", default="synthetic", show_default=True,
              help="'synthetic[:N_CLASSES]', Omniglot-layout folder(s)/zip(s) (comma-separated), "
                   "or a <class>/*.png folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory: model.keras, checkpoint.npz, train_log.jsonl, training.png.")
@click.option("--algorithm", type=click.Choice(["protonet", "maml", "fomaml", "reptile"]),
              default="protonet", show_default=True)
@click.option("--way", default=20, show_default=True)
@click.option("--shot", default=5, show_default=True)
@click.option("--query", default=5, show_default=True)
@click.option("--meta-batch", default=1, show_default=True, help="Tasks per optimisation step.")
@click.option("--inner-steps", default=5, show_default=True, help="MAML family and Reptile.")
@click.option("--inner-lr", type=float, default=None,
              help="MAML family and Reptile [default: 0.4; 0.1 for reptile].")
@click.option("--episodes", default=400, show_default=True, help="Optimisation steps.")
@click.option("--minutes", type=float, default=None, help="Time budget; stops early when spent.")
@click.option("--filters", default=64, show_default=True, help="Conv-4 width (= embedding size).")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random affine and stroke-thickness augmentation.")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="Unit-length embeddings with a learned temperature.")
@click.option("--rotations/--no-rotations", default=False, show_default=True,
              help="Rotated training classes (x4 classes).")
@click.option("--holdout", default="", help="Comma-separated groups (alphabets) held out for "
              "validation instead of a random class split.")
@click.option("--seed", default=0, show_default=True)
@click.option("--test-fraction", default=0.3, show_default=True,
              help="Share of classes held out as unseen for validation (without --holdout).")
@click.option("--checkpoint-every", default=0, show_default=True, help="Episodes; 0: at the end.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
def train(source: str, out_dir: str, algorithm: str, way: int, shot: int, query: int,
          meta_batch: int, inner_steps: int, inner_lr: float | None, episodes: int,
          minutes: float | None, filters: int, lr: float, augment: bool, normalize: bool,
          rotations: bool, holdout: str, seed: int, test_fraction: float,
          checkpoint_every: int, resume: bool) -> None:
    """Meta-train a Conv-4 embedding network on N-way K-shot episodes."""
    from edgemeta.meta import TrainConfig
    from edgemeta.pipeline import DataSplit, train_run

    config = TrainConfig(algorithm=algorithm, n_way=way, k_shot=shot, n_query=query,
                         meta_batch=meta_batch, inner_steps=inner_steps, inner_lr=inner_lr,
                         episodes=episodes, time_budget_s=minutes * 60 if minutes else None,
                         filters=filters, learning_rate=lr, augment=augment, normalize=normalize,
                         seed=seed, checkpoint_every=checkpoint_every)
    split = DataSplit(source, test_fraction, seed,
                      holdout_groups=tuple(g for g in holdout.split(",") if g), rotations=rotations)
    result, paths = train_run(split, config, out_dir, resume=resume)
    last = result.history[-1] if result.history else {}
    click.echo(f"trained {result.episodes_done} episodes in {result.seconds:.1f} s; "
               f"val {config.val_way}-way {config.val_shot}-shot "
               f"{last.get('val_acc', float('nan')):.3f}")
    click.echo(f"wrote {paths['model']} and {paths['plot']}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Bundle to write, e.g. glyphs.edgemeta")
@click.option("--name", default=None, help="Model name (default: the bundle's file stem).")
@click.option("--version", "version", default="1.0.0", show_default=True)
@click.option("--eval-episodes", default=300, show_default=True)
@click.option("--prune", type=float, default=0.0, show_default=True,
              help="Zero this fraction of each kernel's smallest weights before conversion.")
@click.option("--tta-shift", type=int, default=0, show_default=True,
              help="Board test-time views: also embed each image shifted by N px up, down, left "
                   "and right and average (5 invocations per image).")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Sign the bundle with this private key (from 'edgemeta keys generate').")
@click.option("--board", "boards", multiple=True,
              help="Board profile the bundle is built for (repeatable); boards configured as "
                   "another profile refuse it.")
def convert(run_dir: str, out_path: str, name: str | None, version: str, eval_episodes: int,
            prune: float, tta_shift: int, sign_key: str | None, boards: tuple[str, ...]) -> None:
    """Convert a training run to a full-integer int8 bundle and report float vs int8 accuracy."""
    from edgemeta.pipeline import bundle_run, load_run

    model, config, split, pre, _ = load_run(run_dir)
    bundle, report = bundle_run(model, config, split, pre, out_path, name=name or Path(out_path).stem,
                                version=version, eval_episodes=eval_episodes, prune=prune,
                                test_time_shifts=((tta_shift, 0), (-tta_shift, 0), (0, tta_shift),
                                                  (0, -tta_shift)) if tta_shift else (),
                                run_dir=run_dir, signing_key=sign_key, boards=boards)
    for line in report.lines():
        click.echo(line)
    click.echo(f"wrote {out_path} ({bundle.manifest.name} {bundle.manifest.version})")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR|BUNDLE", type=click.Path(exists=True))
@click.option("--support", "support_dir", type=click.Path(exists=True, file_okay=False),
              required=True, help="The site's examples: <label>/*.png, at least 2 per label.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True)
@click.option("--version", "version", required=True, help="Version of the adapted bundle.")
@click.option("--steps", default=10, show_default=True, help="SGD steps on the site's examples.")
@click.option("--lr", type=float, default=None, help="Default: the run's inner learning rate.")
def adapt(run_dir: str, support_dir: str, out_path: str, version: str, steps: int,
          lr: float | None) -> None:
    """Fine-tune a (MAML-family) run on a site's few examples and re-export int8.

    Reports, on held-out examples of the site's classes, whether adaptation beats plain
    prototypes with the original model.
    """
    from edgemeta.pipeline import adapt_run

    bundle, r = adapt_run(run_dir, support_dir, out_path, version=version, steps=steps, lr=lr)
    click.echo(f"{r.classes} classes, {r.support} examples to adapt, {r.held_out} held out:")
    click.echo(f"  prototypes, original model: {100 * r.prototype_accuracy:.1f} %")
    click.echo(f"  prototypes, adapted model : {100 * r.adapted_accuracy:.1f} %  "
               f"({'adaptation helps' if r.adaptation_helps else 'adaptation does not help: ship the original'})")
    click.echo(f"wrote {out_path} ({bundle.manifest.name} {bundle.manifest.version})")


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
    if not url.lower().startswith("mqtt://"):
        raise click.UsageError("--device, --fleet-name and --fleet apply only to mqtt:// targets")
    if device and fleet_pattern:
        raise click.UsageError("give --device ID (one board) or --fleet PATTERN (a roll-out), "
                               "not both")
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
def check(bundle: str, board: str) -> None:
    """Say whether, and why, a bundle fits a board. Exit status 1 if it does not."""
    from edgemeta.boards import check_bundle, get_board
    from edgemeta.bundle import read_bundle

    loaded = read_bundle(bundle)
    # The model bytes let a microcontroller check measure the tensor arena (ignored otherwise).
    result = check_bundle(loaded.manifest, get_board(board), model=loaded.model)
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
@_ssh_options
@_mqtt_options
def flash(bundle: str, url: str, board: str | None, ssh_config: str | None,
          ssh_options: tuple[str, ...], remote_python: str | None, **ota: Any) -> None:
    """Install a bundle on a board: verified, switched atomically, previous version kept."""
    if url.lower().startswith("mqtt:") or ota["device"] or ota["fleet_pattern"] \
            or ota["fleet_name"]:
        return _flash_mqtt(bundle, url, board, **ota)
    if board is not None:  # a microcontroller gets the model via 'edgemeta export c' instead
        from edgemeta.boards import get_board, require_flashable

        require_flashable(get_board(board))
    from firmware_bridge import SSHTransport
    from firmware_bridge import flash as do_flash

    target = _target(url, ssh_config, ssh_options, remote_python)
    r = do_flash(bundle, target, board=board)
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
    from firmware_bridge.mcu import export_c, verify_c_export

    # Verifying needs tflite-micro anyway, so then also measure the arena rather than estimate it.
    e = export_c(bundle, out_dir, name=name, arena="measure" if verify else "auto")
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


# ---------------------------------------------------------------- board side
@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("label")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def enroll(model: str, label: str, images: tuple[str, ...]) -> None:
    """Enroll LABEL from IMAGES on a board home (saved there) or a bundle (not saved)."""
    from edgemeta.runtime import FewShotClassifier

    clf = FewShotClassifier.load(model)
    n = clf.enroll(label, list(images))
    if clf.home is not None:
        clf.save()
    click.echo(f"{label}: {n} examples; enrolled: {', '.join(clf.labels)}")


@cli.command()
@click.argument("home", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
def classify(home: str, images: tuple[str, ...], as_json: bool) -> None:
    """Classify IMAGES with the classes enrolled on a board home."""
    from edgemeta.runtime import FewShotClassifier

    preds = FewShotClassifier.load(home).classify(list(images))
    for path, p in zip(images, preds):
        click.echo(json.dumps({"file": path, "label": p.label, "score": round(p.score, 4)})
                   if as_json else f"{path}: {p.label} ({p.score:.3f})")


@cli.group()
def device() -> None:
    """Run on the board."""


@device.command("run")
@click.option("--home", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--id", "device_id", required=True, help="This board's device id.")
@click.option("--broker", default=None, help="mqtt://HOST:PORT to report to (optional).")
@click.option("--fleet", default="default", show_default=True)
@click.option("--board", default=None, help="Board profile name, reported in the birth message.")
@click.option("--interval", default=5.0, show_default=True, help="Telemetry period in seconds.")
@click.option("--poll", default=1.0, show_default=True, help="Inbox poll period in seconds.")
@click.option("--once", is_flag=True, help="Process the inbox once, report, and exit.")
@click.option("--duration", type=float, default=None, help="Exit after this many seconds.")
def device_run(home: str, device_id: str, broker: str | None, fleet: str, board: str | None,
               interval: float, poll: float, once: bool, duration: float | None) -> None:
    """The device agent: load the current bundle, enroll/classify the inbox, report over MQTT."""
    from edgemeta.agent import DeviceAgent

    agent = DeviceAgent(home, device_id, broker_url=broker, fleet=fleet, interval_s=interval,
                        board=board)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    click.echo(f"{device_id}: model {agent.classifier.manifest.version} on "
               f"{agent.classifier.backend}, {len(agent.classifier.labels)} classes enrolled")
    try:
        agent.run(poll_s=poll, duration_s=duration, once=once)
    except KeyboardInterrupt:
        agent.stop()
    click.echo(f"{device_id}: stopped after {agent.latency.count} classifications")


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


# ---------------------------------------------------------------- demo
@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="edgemeta-demo",
              show_default=True, help="Where the demo writes its artefacts.")
@click.option("--broker", "broker_kind", type=click.Choice(["auto", "mosquitto", "embedded"]),
              default="auto", show_default=True)
@click.option("--quick", is_flag=True, help="Tiny scale (for tests): fewer classes and episodes.")
def demo(out_dir: str, broker_kind: str, quick: bool) -> None:
    """The whole path on generated data: train → int8 → bundle → flash 3 boards → enroll → monitor."""
    from edgemeta.demo import DemoConfig, run_demo

    run_demo(Path(out_dir), DemoConfig.quick() if quick else DemoConfig(), broker_kind=broker_kind)


def _register_trust_commands() -> None:
    from edgemeta.cli_trust import board, bundle, keys

    for command in (keys, bundle, board):
        cli.add_command(command)


_register_trust_commands()


def main() -> None:
    cli(prog_name="edgemeta")


if __name__ == "__main__":
    main()
