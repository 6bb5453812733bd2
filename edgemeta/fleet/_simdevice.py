"""Messages of one simulated device: birth, Last Will, telemetry and graceful death.

Pure bookkeeping, no network: :mod:`edgemeta.fleet.simulate` sends what this builds. Sequence
numbers follow the protocol exactly as :class:`~edgemeta.fleet.reporter.DeviceReporter` does
(see :mod:`edgemeta.fleet.schema`): ``bd_seq`` +1 per connection, shared by the birth and the
Last Will of that connection; ``seq`` 0 in the birth, then +1 per message wrapping at 256;
``(boot, n)`` unique per telemetry message. Payloads are built with the schema dataclasses, so
every one of them passes the same validation as a real board's.
"""

from __future__ import annotations

import hashlib
import random
import time

from edgemeta import __version__
from edgemeta.fleet.schema import Birth, Death, Telemetry, topic, validate_id

__all__ = ["SimDevice"]

_LABELS = ("cat", "dog", "bird", "car", "cup", "key", "pen", "tree")
_MODEL_VERSION = "1.0.0"
# A fixed digest: every simulated board runs "the same model".
_MODEL_SHA256 = hashlib.sha256(b"edgemeta simulated model 1.0.0").hexdigest()


class SimDevice:
    """One simulated board's identity, sequence numbers and plausible metrics.

    Args:
        device_id: Device id.
        fleet: Fleet id.
        boot_ms: Milliseconds since the epoch when the simulated process started; also the
            first session id.
        seed: Seed of this device's metrics, so runs are reproducible.
        interval_s: Telemetry period announced in the birth (the monitor's silence limit is
            never shorter than a few of these); None announces none.

    Attributes:
        sent: Telemetry messages built by :meth:`telemetry` (the simulator publishes each one).
        acked: Telemetry messages the broker acknowledged (maintained by the simulator).
    """

    def __init__(self, device_id: str, fleet: str, boot_ms: int | None = None,
                 seed: int = 0, interval_s: float | None = None) -> None:
        self.device_id = validate_id(device_id, "device id")
        self.fleet = validate_id(fleet, "fleet")
        self.boot = int(time.time() * 1000) if boot_ms is None else int(boot_ms)
        self.session = self.boot
        # bd_seq of the current connection; -1 until the first connect so that connection is 0.
        self.bd_seq = -1
        self.seq = 0
        self.n = 0
        self.sent = 0
        self.acked = 0
        self.interval_s = interval_s
        rng = random.Random(seed)
        self._rng = rng
        self._labels = tuple(rng.sample(_LABELS, rng.randint(2, 5)))
        self._p50 = rng.uniform(0.4, 3.0)
        self._accuracy = rng.uniform(0.80, 0.99)
        self._rss = rng.randint(35, 60) * 1024 * 1024
        self._inferences = 0
        self._t0 = time.monotonic()

    def topic(self, kind: str) -> str:
        """This device's topic of one message kind."""
        return topic(self.fleet, self.device_id, kind)

    def will(self) -> Death:
        """Start a new connection: ``bd_seq`` +1 and the Last Will to register with it.

        Call once before every CONNECT; the next :meth:`birth` carries the same ``bd_seq``.
        A reconnect also takes a larger session, as the reporter does, so a monitor that already
        received the old connection's Will does not take the new birth for a stale one.
        """
        if self.bd_seq >= 0:
            self.session = max(self.session + 1, int(time.time() * 1000))
        self.bd_seq = (self.bd_seq + 1) % 256
        return Death(self.device_id, self.fleet, self.session, ts=None, reason="lost",
                     bd_seq=self.bd_seq)

    def birth(self) -> Birth:
        """The retained birth of the current connection; restarts ``seq`` at 0."""
        self.seq = 0
        return Birth(
            device_id=self.device_id, fleet=self.fleet, session=self.session, ts=time.time(),
            model_version=_MODEL_VERSION, model_sha256=_MODEL_SHA256, backend="ai_edge_litert",
            board="sim", labels=self._labels, agent_version=__version__,
            bd_seq=max(self.bd_seq, 0), seq=0, interval_s=self.interval_s,
        )

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def telemetry(self) -> Telemetry:
        """The next telemetry message: ``seq`` +1 (wrapping), ``n`` +1, drifting metrics."""
        rng = self._rng
        # A few inferences per message and slightly noisy latency, so the table looks alive.
        self._inferences += rng.randint(0, 5)
        p50 = self._p50 * rng.uniform(0.9, 1.1)
        msg = Telemetry(
            device_id=self.device_id, fleet=self.fleet, session=self.session,
            seq=self._next_seq(), ts=time.time(), uptime_s=time.monotonic() - self._t0,
            model_version=_MODEL_VERSION, model_sha256=_MODEL_SHA256, labels=self._labels,
            n_classes=len(self._labels), inference_count=self._inferences,
            latency_p50_ms=round(p50, 3), latency_p95_ms=round(p50 * 1.6, 3),
            rss_bytes=self._rss, accuracy=round(self._accuracy, 4),
            evaluated=self._inferences, boot=self.boot, n=self.n,
        )
        self.n += 1
        self.sent += 1
        return msg

    def graceful_death(self) -> Death:
        """The death published on a clean stop: same ``bd_seq`` as the birth, next ``seq``."""
        return Death(self.device_id, self.fleet, self.session, ts=time.time(),
                     reason="graceful", bd_seq=max(self.bd_seq, 0), seq=self._next_seq())
