"""Counters the agent keeps for telemetry: latency percentiles and few-shot accuracy."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

__all__ = ["LatencyWindow", "AccuracyCounter"]


class LatencyWindow:
    """The last ``size`` latencies (seconds) and a total count; thread-safe."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)
            self.count += 1

    def percentiles_ms(self, *qs: float) -> tuple[float | None, ...]:
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if len(values) == 0:
            return tuple(None for _ in qs)
        return tuple(float(np.percentile(values, q) * 1000.0) for q in qs)


class AccuracyCounter:
    """Correct / evaluated over classifications whose true label is known."""

    def __init__(self) -> None:
        self.correct = 0
        self.evaluated = 0

    def add(self, predicted: str, expected: str) -> None:
        self.evaluated += 1
        self.correct += int(predicted == expected)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.evaluated if self.evaluated else None
