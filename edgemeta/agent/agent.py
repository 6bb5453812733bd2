"""The device agent: runtime + reporter in one process on the board.

It loads the current bundle from the board home, enrolls ``inbox/enroll/<label>/*.png``,
classifies ``inbox/classify/*.png`` (and ``inbox/classify/<label>/*.png``, whose folder names the
expected label so the board can measure its own few-shot accuracy), appends results to
``outbox/results.jsonl`` and reports over MQTT. Processed files move to ``inbox/done/`` so that
nothing is enrolled twice and nothing the user gave is deleted; unreadable files move to
``inbox/failed/`` with an error record.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypedDict

from edgemeta.bundle import BoardHome
from edgemeta.errors import EdgemetaError
from edgemeta.agent.commands import CommandHandler, all_or_nothing
from edgemeta.agent.stats import AccuracyCounter, LatencyWindow
from firmware_bridge.boot import start_classifier
from edgemeta.runtime.preprocess import IMAGE_SUFFIXES, to_uint8_image

if TYPE_CHECKING:
    from edgemeta.fleet import DeviceReporter, DeviceStatus
    from firmware_bridge.install import InstallResult
    from firmware_bridge.ota import BoardOta

__all__ = ["DeviceAgent", "InboxReport", "IMAGE_SUFFIXES", "configure_logging"]

log = logging.getLogger(__name__)
RECONNECT_S = 15.0  # between attempts to start OTA when the broker was down for it
# Starting OTA blocks the main loop while the broker does not answer (connect + subscribe, each
# up to this): short, so SIGTERM is handled in time (the unit's TimeoutStopSec=30).
OTA_CONNECT_TIMEOUT_S = 3.0
# reporter.stop() in all (last telemetry, threads, graceful death): well inside TimeoutStopSec.
REPORTER_STOP_S = 10.0
# A board's SD card is small and logs must never fill it: 1 MiB x (1 + 3 backups) at most.
LOG_MAX_BYTES = 1024 * 1024
LOG_BACKUPS = 3


def configure_logging(path: str | os.PathLike[str], max_bytes: int = LOG_MAX_BYTES,
                      backups: int = LOG_BACKUPS, level: int = logging.INFO
                      ) -> logging.handlers.RotatingFileHandler:
    """Send the agent's log (and paho's, edgemeta's) to a size-bounded rotating file.

    Args:
        path: The log file, e.g. ``HOME/agent.log``; rotated to ``agent.log.1`` ... ``.N``.
        max_bytes: Size at which the file is rotated.
        backups: Rotated files kept (>= 1; with 0 the file would never be rotated).
        level: Lowest level written to the file.

    Returns:
        The handler, added to the root logger (remove it to stop logging there).
    """
    if backups < 1:
        # RotatingFileHandler never rolls over with backupCount=0: the log would grow forever.
        raise ValueError(f"backups must be >= 1, got {backups!r}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level or logging.WARNING
    if previous > level:
        # Lowering the root level for the file must not make stderr chattier than before.
        for other in root.handlers:
            if other.level == logging.NOTSET:
                other.setLevel(previous)
        root.setLevel(level)
    root.addHandler(handler)
    return handler


class _ReporterArgs(TypedDict):
    broker_url: str | None
    device_id: str
    fleet: str
    interval_s: float
    board: str | None
    spool_max_bytes: int | None
    wait_for_monitor: bool


@dataclass(frozen=True)
class InboxReport:
    enrolled: dict[str, int]
    classified: int
    failed: int


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class DeviceAgent:
    """One board: a :class:`FewShotClassifier` over a board home, plus optional MQTT reporting.

    With ``broker_url``, a :class:`~edgemeta.fleet.DeviceReporter` reports over MQTT; its
    ``spool_max_bytes`` and ``wait_for_monitor`` are passed through (see there).
    """

    def __init__(self, home: str | os.PathLike[str], device_id: str, *, broker_url: str | None = None,
                 fleet: str = "default", interval_s: float = 5.0, backend: str | None = None,
                 board: str | None = None, num_threads: int = 1, ota: bool = True,
                 spool_max_bytes: int | None = None, wait_for_monitor: bool = False) -> None:
        self.home = BoardHome.at(home)
        self.device_id = device_id
        self.fleet = fleet
        # The birth names the profile the home was set up for unless told otherwise.
        self.board = board if board is not None else _configured_board(self.home)
        # A current model that cannot start (a card gone bad) is rolled back once, by itself.
        started = start_classifier(self.home, backend=backend, num_threads=num_threads)
        self.classifier = started.classifier
        self.rolled_back_at_start = started.rolled_back
        if started.rolled_back:
            log.error("%s", started.rolled_back)
        self._backend, self._num_threads = backend, num_threads
        self._ota_enabled = ota  # accept over-the-air updates when a broker is given
        self.ota: BoardOta | None = None  # started with the reporter
        self.latency = LatencyWindow()
        self.accuracy = AccuracyCounter()
        self._stop = threading.Event()
        # Reporter threads read the store and counters while the main loop changes them.
        self._lock = threading.RLock()
        self._reporting = False
        self._next_connect = 0.0
        self._status_snapshot: DeviceStatus | None = None
        self._status_snapshot = self.status()
        # Remote commands (`edgemeta fleet cmd`) take the same lock as the inbox loop.
        self.commands = CommandHandler(self, self._lock, backend=backend, num_threads=num_threads)
        self.reporter: DeviceReporter | None = None
        self._reporter_args = _ReporterArgs(broker_url=broker_url, device_id=device_id,
                                            fleet=fleet, interval_s=interval_s, board=self.board,
                                            spool_max_bytes=spool_max_bytes,
                                            wait_for_monitor=wait_for_monitor)
        if broker_url:
            self.reporter = self._new_reporter(broker_url)

    def _new_reporter(self, broker_url: str) -> DeviceReporter:
        from edgemeta.fleet import DeviceReporter

        from edgemeta.fleet.spool import DEFAULT_MAX_BYTES

        a = self._reporter_args
        # Telemetry waits in HOME/spool while the broker is away and is replayed afterwards.
        return DeviceReporter(broker_url, a["device_id"], fleet=a["fleet"],
                              interval_s=a["interval_s"], status=self.status, board=a["board"],
                              backend=self.classifier.backend, command_handler=self.commands,
                              spool=self.home.root / "spool",
                              spool_max_bytes=a["spool_max_bytes"] or DEFAULT_MAX_BYTES,
                              wait_for_monitor=a["wait_for_monitor"],
                              # sessions keep growing across restarts, clock set back or not
                              session_path=self.home.state_dir / "reporter.json")

    def status(self) -> "DeviceStatus":
        """A consistent snapshot of what the board is doing, for the reporter's threads.

        Never waits for the agent's lock: the reporter calls this on paho's network thread (on
        every reconnect), which must keep answering the broker while an enroll or an OTA install
        holds the lock for seconds. When the lock is busy, the last snapshot is returned; the
        next telemetry carries the change.
        """
        if not self._lock.acquire(blocking=False):
            snapshot = self._status_snapshot
            if snapshot is not None:
                return snapshot
            self._lock.acquire()  # only while the agent is being built
        try:
            self._status_snapshot = self._compose_status()
            return self._status_snapshot
        finally:
            self._lock.release()

    def _compose_status(self) -> "DeviceStatus":
        """Read the status (called with the lock held)."""
        from edgemeta.fleet import DeviceStatus

        p50, p95 = self.latency.percentiles_ms(50, 95)
        m = self.classifier.manifest
        return DeviceStatus(
            model_version=m.version, model_sha256=m.model_sha256,
            labels=tuple(self.classifier.labels), inference_count=self.latency.count,
            latency_p50_ms=p50, latency_p95_ms=p95,
            accuracy=self.accuracy.accuracy, evaluated=self.accuracy.evaluated,
        )

    def _move(self, path: Path, bucket: str) -> Path:
        """Move an inbox file under ``inbox/<bucket>/`` keeping its relative path, never overwriting."""
        inbox = self.home.root / "inbox"
        target = inbox / bucket / path.relative_to(inbox)
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():
            target = target.with_name(f"{path.stem}.{n}{path.suffix}")
            n += 1
        shutil.move(str(path), target)
        return target

    def _record(self, out: TextIO, record: dict[str, Any]) -> None:
        out.write(json.dumps(record) + "\n")

    def process_inbox(self) -> InboxReport:
        """Enroll, then classify, whatever is waiting in the inbox.

        Unreadable files are moved to ``inbox/failed/`` with an error record in the results file;
        they never block the good files next to them. After :meth:`stop` it returns between two
        files (or label folders): the rest stays in the inbox for the next run.
        """
        enrolled: dict[str, int] = {}
        failed = 0
        self.home.results_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.home.results_path, "a", encoding="utf-8") as out:
            for label_dir in sorted(d for d in self.home.enroll_inbox.glob("*") if d.is_dir()):
                if self._stop.is_set():
                    break
                n, bad = self._enroll_folder(label_dir, out)
                failed += bad
                if n:
                    enrolled[label_dir.name] = n
            classified = 0
            if self.classifier.labels and not self._stop.is_set():
                root = self.home.classify_inbox
                jobs: list[tuple[Path, str | None]] = [(p, None) for p in _images_in(root)]
                jobs += [(p, d.name) for d in sorted(x for x in root.glob("*") if x.is_dir())
                         for p in _images_in(d)]
                for path, expected in jobs:
                    if self._stop.is_set():
                        break  # SIGTERM: the rest waits in the inbox for the next start
                    record = self._classify_one(path, expected)
                    ok = "error" not in record
                    record["moved_to"] = str(self._move(path, "done" if ok else "failed")
                                             .relative_to(self.home.root))
                    self._record(out, record)
                    classified += ok
                    failed += not ok
            out.flush()
            os.fsync(out.fileno())
        return InboxReport(enrolled, classified, failed)

    def _enroll_folder(self, label_dir: Path, out: TextIO) -> tuple[int, int]:
        files = _images_in(label_dir)
        images, good, bad = [], [], 0
        for f in files:
            try:
                images.append(to_uint8_image(f))
                good.append(f)
            except EdgemetaError as exc:
                bad += 1
                moved = self._move(f, "failed")
                self._record(out, {"file": str(f.relative_to(self.home.root)), "ts": time.time(),
                                   "action": "enroll", "error": str(exc),
                                   "moved_to": str(moved.relative_to(self.home.root))})
        if not images:
            return 0, bad
        try:
            # All or nothing: a failed save (full card) must not leave the class enrolled in
            # memory only, to vanish at the next start while its files sit in failed/.
            with self._lock, all_or_nothing(self.classifier):
                count = self.classifier.enroll(label_dir.name, images)
                self.classifier.save()  # persist before moving: a crash re-enrolls, never loses
        except EdgemetaError as exc:
            log.error("could not enroll %s: %s", label_dir.name, exc)
            for f in good:
                self._move(f, "failed")
            return 0, bad + len(good)
        for f in good:
            self._move(f, "done")
        return count, bad

    def _classify_one(self, path: Path, expected: str | None) -> dict:
        record: dict = {"file": str(path.relative_to(self.home.root)), "ts": time.time(),
                        "model_version": self.classifier.manifest.version}
        started = time.perf_counter()
        try:
            image = to_uint8_image(path)
            with self._lock:
                pred = self.classifier.classify([image])[0]
        except Exception as exc:  # one bad file must never stop the board
            record["error"] = str(exc) if isinstance(exc, EdgemetaError) else repr(exc)
            return record
        with self._lock:
            self.latency.add(time.perf_counter() - started)
            if expected is not None:
                self.accuracy.add(pred.label, expected)
        record.update(label=pred.label, score=round(pred.score, 4))
        if expected is not None:
            record["expected"] = expected
        return record

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stop.set()

    def _report(self, now: bool) -> None:
        """Connect the reporter if needed and publish; a broker outage never stops the board."""
        if self.reporter is None:
            return
        from edgemeta.errors import FleetError

        if not self._reporting:
            # Never blocks: paho keeps (re)connecting in the background, broker restarts
            # included, and telemetry waits in the spool meanwhile.
            self.reporter.start(wait=False)
            self._reporting = True
            self._next_connect = time.monotonic()
            return
        if self.ota is None and self._ota_enabled and time.monotonic() >= self._next_connect:
            self._next_connect = time.monotonic() + RECONNECT_S
            self._start_ota()  # the broker was reachable for the reporter but not for OTA
        if now:
            try:
                self.reporter.report()  # sent now, or spooled until the broker is back
            except FleetError as exc:
                log.warning("telemetry not sent: %s", exc)

    def _start_ota(self) -> None:
        """Listen for over-the-air updates on a second MQTT connection; offline is not fatal."""
        from edgemeta.errors import FleetError
        from firmware_bridge.ota import BoardOta

        if self.ota is not None or not self._ota_enabled:
            return
        a = self._reporter_args
        broker_url = a["broker_url"]
        if broker_url is None:  # only called once the reporter (which needs one) exists
            raise FleetError("over-the-air updates need a broker URL")
        ota = BoardOta(broker_url, self.home, self.device_id, a["fleet"],
                       on_installed=self._on_ota_installed, install=self._install_locked,
                       connect_timeout_s=OTA_CONNECT_TIMEOUT_S)
        try:
            ota.start()
        except FleetError as exc:
            log.warning("over-the-air updates unavailable (%s); retrying with the reporter", exc)
            return
        self.ota = ota

    def _install_locked(self, path: Path, home: BoardHome, **options: Any) -> InstallResult:
        """Install under the agent's lock and switch to the new model before releasing it.

        The inbox loop and remote commands take the same lock, so nothing is enrolled between
        the install reading the learned classes (to re-learn them) and the agent running the
        new model: no class can end up only in the old model's state.
        """
        from firmware_bridge.install import install_bundle

        with self._lock:
            result = install_bundle(path, home, **options)
            if result.changed:
                self._reload()
            return result

    def _reload(self) -> None:
        """Run the model the board home now names (called with the lock held)."""
        started = start_classifier(self.home, backend=self._backend,
                                   num_threads=self._num_threads)
        self.classifier = started.classifier
        if started.rolled_back:
            log.error("%s", started.rolled_back)

    def _follow_current(self) -> bool:
        """Pick up a model installed or rolled back by another process (dir:, ssh, CLI)."""
        try:
            version = self.home.current_version()
        except EdgemetaError:
            return False  # a damaged pointer: keep running the loaded model
        if version is None or version == self.classifier.manifest.version:
            return False
        with self._lock:
            self._reload()
        log.warning("now running %s (the board home's current version changed)",
                    self.classifier.manifest.version)
        return True

    def _on_ota_installed(self, result: InstallResult) -> None:
        """After an over-the-air install (already running the new model): tell the fleet."""
        from edgemeta.errors import FleetError

        log.warning("now running %s (installed over the air; previous %s)", result.version,
                    result.previous_version)
        if self.reporter is not None and self._reporting:
            try:
                self.reporter.publish_birth()
            except FleetError as exc:  # the next reconnect's birth carries it anyway
                log.warning("birth after the update not acknowledged: %s", exc)

    def _publish_birth_quietly(self) -> None:
        from edgemeta.errors import FleetError

        if self.reporter is None:  # callers check first
            raise FleetError("no reporter to publish the birth: expected a broker URL")
        try:
            self.reporter.publish_birth()
        except FleetError as exc:  # the next reconnect's birth carries it anyway
            log.warning("birth after the model change not acknowledged: %s", exc)

    def run(self, *, poll_s: float = 1.0, duration_s: float | None = None, once: bool = False) -> None:
        """Report, process the inbox, and keep polling until :meth:`stop`, the duration, or ``once``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        self._report(now=False)
        try:
            while True:
                if self._follow_current() and self.reporter is not None and self._reporting:
                    self._publish_birth_quietly()
                report = self.process_inbox()
                self._report(now=bool(report.enrolled or report.classified or report.failed))
                if once or self._stop.is_set():
                    break
                timeout = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
                if timeout <= 0 or self._stop.wait(timeout):
                    break
        finally:
            if once and self.reporter is not None and self._reporting:
                # A one-shot run exists to report: give the non-blocking start a bounded
                # chance to connect, so its figures go out now rather than at the next start.
                self.reporter.flush(5.0, wait_online=True)
            if self.ota is not None:
                self.ota.stop()
                self.ota = None
            if self.reporter is not None and self._reporting:
                self.reporter.stop(REPORTER_STOP_S)


def _configured_board(home: BoardHome) -> str | None:
    """The profile in the home's board.json; None if none (or it is damaged: the board runs)."""
    from edgemeta.bundle import read_config

    try:
        return read_config(home).board
    except EdgemetaError as exc:
        log.warning("cannot read the board profile from %s: %s", home.root, exc)
        return None
