"""Board-side commands: enroll, classify, and the device agent."""

from __future__ import annotations

import json
import signal

import click

from edgemeta.cli._base import cli

# A period of 0 s would make the agent's loop end after one pass (or spin): strictly positive.
_PERIOD = click.FloatRange(min=0, min_open=True)


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
@click.option("--broker", default=None,
              help="Broker to report to (optional): mqtts://USER@HOST?ca=CA.pem&password_file=F, "
                   "or mqtt://HOST without credentials (docs/telemetry.md, Security).")
@click.option("--fleet", default="default", show_default=True)
@click.option("--board", default=None, help="Board profile name, reported in the birth message.")
@click.option("--interval", type=_PERIOD, default=5.0, show_default=True,
              help="Telemetry period in seconds.")
@click.option("--poll", type=_PERIOD, default=1.0, show_default=True,
              help="Inbox poll period in seconds.")
@click.option("--once", is_flag=True, help="Process the inbox once, report, and exit.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Exit after this many seconds.")
@click.option("--log-file", default=None, type=click.Path(dir_okay=False),
              help="Rotating log file [default: HOME/agent.log]; '-' logs to stderr only.")
@click.option("--log-max-bytes", default=1024 * 1024, show_default=True, type=click.IntRange(1024),
              help="Rotate the log file at this size.")
@click.option("--log-backups", default=3, show_default=True, type=click.IntRange(1),
              help="Rotated log files kept (at least 1: with 0 the log would never rotate).")
@click.option("--spool-max-bytes", default=8 * 1024 * 1024, show_default=True,
              type=click.IntRange(4096),
              help="Telemetry kept in HOME/spool while the broker is unreachable; oldest dropped.")
@click.option("--wait-for-monitor", is_flag=True,
              help="After each connect, publish the birth and replay the spool only once a "
                   "monitor's retained host state is online (Sparkplug's rule for edge nodes).")
def device_run(home: str, device_id: str, broker: str | None, fleet: str, board: str | None,
               interval: float, poll: float, once: bool, duration: float | None,
               log_file: str | None, log_max_bytes: int, log_backups: int,
               spool_max_bytes: int, wait_for_monitor: bool) -> None:
    """The device agent: load the current bundle, enroll/classify the inbox, report over MQTT.

    SIGTERM or SIGINT stops it cleanly: the inbox pass in progress finishes, a graceful death is
    published, queued telemetry stays in HOME/spool for the next start, and it exits with 0.
    """
    from pathlib import Path

    from edgemeta.agent import DeviceAgent
    from edgemeta.agent.agent import configure_logging

    if wait_for_monitor and not broker:
        raise click.UsageError("--wait-for-monitor waits for a monitor on the broker: give --broker")
    if board is not None:
        from edgemeta.boards import get_board, require_flashable

        # The name goes into the retained birth the fleet sees: a typo must not get that far.
        require_flashable(get_board(board))
    if log_file != "-":
        configure_logging(log_file or Path(home) / "agent.log", log_max_bytes, log_backups)
    agent = DeviceAgent(home, device_id, broker_url=broker, fleet=fleet, interval_s=interval,
                        board=board, spool_max_bytes=spool_max_bytes,
                        wait_for_monitor=wait_for_monitor)
    # Both signals only ask the loop to stop: the graceful death and the spool state are
    # written by run()'s normal exit path, not from inside a signal handler.
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    click.echo(f"{device_id}: model {agent.classifier.manifest.version} on "
               f"{agent.classifier.backend}, {len(agent.classifier.labels)} classes enrolled")
    try:
        agent.run(poll_s=poll, duration_s=duration, once=once)
    except KeyboardInterrupt:
        agent.stop()
    click.echo(f"{device_id}: stopped after {agent.latency.count} classifications")
