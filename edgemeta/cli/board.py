"""Board-side commands: enroll, classify, and the device agent."""

from __future__ import annotations

import json
import signal

import click

from edgemeta.cli._base import cli


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
