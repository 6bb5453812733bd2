"""``edgemeta demo``: the whole product path on data the project generates itself.

generate glyphs → meta-train → int8 → bundle → board check → flash 3 boards → broker + agents →
enroll unseen classes from 1-5 examples on the boards → classify → monitor → clean shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rich.console import Console

from edgemeta.bundle import Preprocessing, generate_keypair, init_home
from edgemeta.errors import EdgemetaError

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

BOARDS = (("board-1", "rpi-4b", 1), ("board-2", "rpi-5", 3), ("board-3", "rpi-zero-2w", 5))


@dataclass(frozen=True)
class DemoConfig:
    n_classes: int = 300
    way: int = 20
    shot: int = 5
    query: int = 5
    episodes: int = 600
    filters: int = 64
    eval_episodes: int = 400
    held_back: int = 5   # classify images per enrolled class on each board
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoConfig":
        """Tiny scale for tests: a few seconds of training, accuracy not meaningful."""
        return cls(n_classes=60, way=5, shot=2, query=3, episodes=30, filters=16,
                   eval_episodes=20, held_back=2)


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    bundle: Path
    float_accuracy: float
    int8_accuracy: float
    board_accuracy: dict[str, float | None]
    seconds: float


def _fill_inbox(home: Path, dataset, classes: np.ndarray, shots: int, held_back: int,
                rng: np.random.Generator) -> int:
    """Put ``shots`` drawings per class to enroll and ``held_back`` others to classify."""
    from edgemeta.data import write_image_folder

    by_class = dataset.indices_by_class()
    picks = [rng.permutation(by_class[c])[: shots + held_back] for c in classes]
    write_image_folder(dataset, home / "inbox" / "enroll", np.concatenate([p[:shots] for p in picks]))
    write_image_folder(dataset, home / "inbox" / "classify",
                       np.concatenate([p[shots:] for p in picks]))
    return len(classes) * held_back


def run_demo(out_dir: Path, config: DemoConfig = DemoConfig(), broker_kind: str = "auto",
             console: Console | None = None) -> DemoResult:
    """Run the demo, writing everything under ``out_dir``; returns the measured figures."""
    from edgemeta.boards import check_bundle, get_board
    from edgemeta.fleet import FleetMonitor, render_table, start_broker
    from edgemeta.meta import TrainConfig
    from edgemeta.pipeline import DataSplit, bundle_run, split_source, train_run
    from firmware_bridge import flash

    # A log file or pipe gets a width that fits the fleet table; a terminal keeps its own.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    started = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. data")
    split = DataSplit(f"synthetic:{config.n_classes}", test_fraction=0.3, seed=config.seed)
    train, unseen = split_source(split)
    if unseen.num_classes < 5 * len(BOARDS):
        raise EdgemetaError(f"the demo needs {5 * len(BOARDS)} unseen classes (5 per board), "
                            f"got {unseen.num_classes}; raise n_classes")
    console.print(f"synthetic glyphs: {train.num_classes} training classes, {unseen.num_classes} "
                  f"unseen classes, {len(train) + len(unseen)} images of {train.images.shape[1:]} px")

    console.rule("[bold]2. meta-train (prototypical network, Conv-4)")
    tconf = TrainConfig(n_way=config.way, k_shot=config.shot, n_query=config.query,
                        episodes=config.episodes, filters=config.filters, seed=config.seed,
                        val_every=max(1, config.episodes // 4), val_episodes=100)
    result, paths = train_run(split, tconf, out / "run")
    console.print(f"{config.episodes} episodes of {config.way}-way {config.shot}-shot in "
                  f"{result.seconds:.1f} s; model at {paths['model']}")

    console.rule("[bold]3. int8 conversion, signed bundle")
    key = out / "keys" / "demo-release.key"
    if not key.exists():  # a re-run keeps its key, as a real release key would be kept
        key.parent.mkdir(parents=True, exist_ok=True)
        generate_keypair(key)
    bundle_path = out / "glyphs.edgemeta"
    bundle, report = bundle_run(result.model, tconf, split, Preprocessing(), bundle_path,
                                name="glyphs", version="1.0.0", eval_episodes=config.eval_episodes,
                                signing_key=key)
    for line in report.lines():
        console.print(line)

    console.rule("[bold]4. bundle and board check")
    console.print(f"bundle {bundle_path} ({bundle_path.stat().st_size / 1024:.1f} KiB), "
                  f"model sha256 {bundle.manifest.model_sha256[:16]}..., signed by key "
                  f"{bundle.signature.key_id if bundle.signature else 'none'}")
    for _, board, _ in BOARDS:
        console.print("  " + check_bundle(bundle.manifest, get_board(board)).summary())

    console.rule("[bold]5. flash three simulated boards")
    rng = np.random.default_rng(config.seed)
    unseen_classes = rng.permutation(unseen.num_classes)
    homes, expected = {}, {}
    for i, (device_id, board, shots) in enumerate(BOARDS):
        home = out / "boards" / device_id
        home.parent.mkdir(parents=True, exist_ok=True)
        init_home(home, trust=[key.with_name(key.name + ".pub")], board=board)
        r = flash(bundle_path, f"dir:{home}", board=board)
        homes[device_id] = home
        classes = unseen_classes[5 * i: 5 * i + 5]
        expected[device_id] = _fill_inbox(home, unseen, classes, shots, config.held_back, rng)
        health = r.health.message if r.health else "not checked"
        console.print(f"  {device_id} ({board}): installed {r.version}, {r.trust}, {health}")
        console.print(f"    inbox: 5 unseen classes "
                      f"x {shots} example(s) to enroll, {expected[device_id]} images to classify")

    console.rule("[bold]6. broker, device agents, monitor")
    (out / "broker").mkdir(exist_ok=True)
    with _terminate_as_interrupt(), start_broker(broker_kind, workdir=out / "broker") as broker:
        console.print(f"broker: {broker.kind} at {broker.url}")
        procs = _start_agents(homes, broker.url)
        try:
            with FleetMonitor(broker.url, fleet_pattern="demo") as monitor:
                done = monitor.wait_until(lambda states: _all_reported(states, expected), 120.0)
                console.rule("[bold]7. fleet")
                console.print(render_table(monitor.snapshot()))
                if not done:
                    raise EdgemetaError("not every board reported its results within 120 s; "
                                        f"see the agent logs under {out / 'boards'}")
                board_acc = {s.device_id: s.accuracy for s in monitor.snapshot()}
                _stop_agents(procs)
                monitor.wait_until(lambda st: all(s.state == "offline" for s in st), 20.0)
                console.print("after shutdown: " + ", ".join(
                    f"{s.device_id} {s.state} ({s.death_reason})" for s in monitor.snapshot()))
        finally:
            _stop_agents(procs)
    seconds = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"demo finished in {seconds:.0f} s; artefacts in {out}")
    return DemoResult(out, bundle_path, report.float_accuracy.mean, report.int8_accuracy.mean,
                      board_acc, seconds)


def _all_reported(states, expected: dict[str, int]) -> bool:
    seen = {s.device_id: s for s in states if s.state == "online"}
    return all(d in seen and (seen[d].evaluated or 0) >= n for d, n in expected.items())


def _start_agents(homes: dict[str, Path], broker_url: str) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for (device_id, board, _), home in zip(BOARDS, homes.values()):
            with open(home / "agent.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "edgemeta", "device", "run", "--home", str(home),
                     "--id", device_id, "--fleet", "demo", "--board", board, "--broker",
                     broker_url, "--interval", "1", "--poll", "0.5"],
                    stdout=log, stderr=subprocess.STDOUT, env=env))
    except BaseException:
        _stop_agents(procs)
        raise
    return procs


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt like Ctrl-C does.

    Python's default SIGTERM action ends the process without running ``finally`` blocks or
    context exits, which would orphan the agents and the mosquitto process. Only the main thread
    may set signal handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_agents(procs: list[subprocess.Popen], timeout_s: float = 15.0) -> None:
    """SIGTERM every agent (a graceful death for the monitor), SIGKILL those that do not stop.

    Whatever interrupts the shutdown (a second Ctrl-C, a wait that fails) kills the agents not
    yet stopped before it propagates: none is left running.
    """
    try:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    except BaseException:
        # Kill them all first (kill does not block), then reap: an interrupt while reaping one
        # must not leave a later one running. The original exception is what propagates.
        for p in procs:
            with contextlib.suppress(Exception):
                if p.poll() is None:
                    p.kill()
        for p in procs:
            with contextlib.suppress(BaseException):
                p.wait(timeout=5)
        raise
