"""The device agent: runtime + reporter in one process on the board.

It loads the current bundle from the board home, enrolls ``inbox/enroll/<label>/*.png``,
classifies ``inbox/classify/*.png`` (and ``inbox/classify/<label>/*.png``, whose folder names the
expected label so the board can measure its own few-shot accuracy), appends results to
``outbox/results.jsonl`` and reports over MQTT. Processed files move to ``inbox/done/`` so that
nothing is enrolled twice and nothing the user gave is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgemeta import __version__
from edgemeta.bundle import BoardHome
from edgemeta.errors import EdgemetaError
from edgemeta.agent.stats import AccuracyCounter, LatencyWindow
from edgemeta.runtime.classifier import FewShotClassifier

__all__ = ["DeviceAgent", "InboxReport", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")


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
    """One board: a :class:`FewShotClassifier` over a board home, plus optional MQTT reporting."""

    def __init__(self, home: str | os.PathLike[str], device_id: str, *, broker_url: str | None = None,
                 fleet: str = "default", interval_s: float = 5.0, backend: str | None = None,
                 board: str | None = None, num_threads: int = 1) -> None:
        self.home = BoardHome.at(home)
        self.device_id = device_id
        self.fleet = fleet
        self.board = board
        self.classifier = FewShotClassifier.load(self.home.root, backend=backend,
                                                 num_threads=num_threads)
        self.latency = LatencyWindow()
        self.accuracy = AccuracyCounter()
        self._stop = threading.Event()
        self.reporter = None
        if broker_url:
            from edgemeta.fleet import DeviceReporter

            self.reporter = DeviceReporter(broker_url, device_id, fleet=fleet, interval_s=interval_s,
                                           status=self.status, board=board,
                                           backend=self.classifier.backend)

    def status(self):
        """A snapshot of what the board is doing, for the reporter."""
        from edgemeta.fleet import DeviceStatus

        p50, p95 = self.latency.percentiles_ms(50, 95)
        m = self.classifier.manifest
        return DeviceStatus(
            model_version=m.version, model_sha256=m.model_sha256,
            labels=list(self.classifier.labels), inference_count=self.latency.count,
            latency_p50_ms=p50, latency_p95_ms=p95,
            accuracy=self.accuracy.accuracy, evaluated=self.accuracy.evaluated,
        )

    def _done(self, path: Path) -> None:
        target = self.home.root / "inbox" / "done" / path.relative_to(self.home.root / "inbox")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)

    def process_inbox(self) -> InboxReport:
        """Enroll, then classify, whatever is waiting in the inbox."""
        enrolled: dict[str, int] = {}
        failed = 0
        enroll_root = self.home.enroll_inbox
        for label_dir in sorted(d for d in enroll_root.glob("*") if d.is_dir()):
            files = _images_in(label_dir)
            if not files:
                continue
            try:
                enrolled[label_dir.name] = self.classifier.enroll(label_dir.name, files)
            except EdgemetaError as exc:
                log.error("could not enroll %s: %s", label_dir.name, exc)
                failed += len(files)
                continue
            self.classifier.save()  # persist before moving files: a crash re-enrolls, never loses
            for f in files:
                self._done(f)
        classified = 0
        root = self.home.classify_inbox
        jobs = [(p, None) for p in _images_in(root)]
        jobs += [(p, d.name) for d in sorted(x for x in root.glob("*") if x.is_dir())
                 for p in _images_in(d)]
        if jobs and not self.classifier.labels:
            log.warning("%d images wait in %s but no class is enrolled yet", len(jobs), root)
            return InboxReport(enrolled, 0, failed)
        if jobs:
            self.home.results_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.home.results_path, "a", encoding="utf-8") as out:
                for path, expected in jobs:
                    record = self._classify_one(path, expected)
                    failed += "error" in record
                    classified += "error" not in record
                    out.write(json.dumps(record) + "\n")
                    self._done(path)
                out.flush()
                os.fsync(out.fileno())
        return InboxReport(enrolled, classified, failed)

    def _classify_one(self, path: Path, expected: str | None) -> dict:
        record: dict = {"file": str(path.relative_to(self.home.root)), "ts": time.time(),
                        "model_version": self.classifier.manifest.version}
        started = time.perf_counter()
        try:
            pred = self.classifier.classify([path])[0]
        except EdgemetaError as exc:
            record["error"] = str(exc)
            return record
        self.latency.add(time.perf_counter() - started)
        record.update(label=pred.label, score=round(pred.score, 4))
        if expected is not None:
            record["expected"] = expected
            self.accuracy.add(pred.label, expected)
        return record

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, poll_s: float = 1.0, duration_s: float | None = None, once: bool = False) -> None:
        """Report, process the inbox, and keep polling until :meth:`stop`, the duration, or ``once``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        if self.reporter:
            self.reporter.start()
        try:
            while True:
                report = self.process_inbox()
                if self.reporter and (report.enrolled or report.classified):
                    self.reporter.publish_now()
                if once or self._stop.is_set():
                    break
                timeout = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
                if timeout <= 0 or self._stop.wait(timeout):
                    break
        finally:
            if self.reporter:
                self.reporter.stop()
