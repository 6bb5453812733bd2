"""Per-device bookkeeping of the monitor: sessions, Sparkplug sequence numbers, replay de-duplication.

No MQTT and no locking here: :class:`~edgemeta.fleet.monitor.FleetMonitor` feeds decoded messages
to a :class:`FleetTracker` under its own lock, and publishes the rebirth requests it returns. The
per-message path is a handful of integer operations, so 1,000 messages per second cost little next
to JSON decoding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgemeta.fleet.schema import Birth, Death, Reply, Telemetry

__all__ = [
    "MAX_BOOTS_TRACKED",
    "MAX_DEVICES",
    "REPLAY_WINDOW",
    "RESYNC",
    "SEQ_MODULUS",
    "DeviceState",
    "FleetTracker",
    "SeenWindow",
]

log = logging.getLogger(__name__)

SEQ_MODULUS = 256
# Devices tracked by default: a device (or anything allowed to publish on "+") must not grow the
# table without limit. About 1 KiB each, so the default costs ~100 MB at most.
MAX_DEVICES = 100_000
# Overflow is logged at most once per this many seconds of monitor time.
_OVERFLOW_LOG_S = 60.0
# A duplicate telemetry message (same (boot, n)) whose seq is 128+ "ahead" is read as behind.
_HALF = SEQ_MODULUS // 2
# How many telemetry numbers before the newest one are remembered per boot: 4096 bits = 512 bytes,
# over an hour of 1 Hz telemetry, so a long spool replay arriving after live messages still
# de-duplicates; anything older is counted as "unverifiable", never silently as new.
REPLAY_WINDOW = 4096
# Boots remembered per device: a few restarts' worth of late replays, bounded memory.
MAX_BOOTS_TRACKED = 4
# expected_seq value meaning "take the next seq as it comes": after a retained birth (the device
# may have sent any number of messages since) or after the monitor's own reconnect.
RESYNC = -1
# Smoothing of the telemetry cadence estimate (exponential moving average weight of a new delta).
_EWMA = 0.2
# A device's timestamps may advance at most this factor times the monitor's own time between two
# arrivals, plus the slack below, to count for the cadence and the inference rate. A board without
# an RTC has its clock stepped by NTP (days, even years) between two messages; taken as a cadence
# sample, that step would stretch the silence limit so far that a dead device stayed "online".
# Generous on purpose: a message held up in the broker's queue only shrinks the arrival time.
_CLOCK_STEP_FACTOR = 2.0
_CLOCK_STEP_SLACK_S = 2.0


@dataclass(frozen=True)
class DeviceState:
    """What the monitor knows about one device.

    ``last_seen`` is the monitor's clock (unix seconds) at the last birth, telemetry or reply
    received, not the device's own timestamp, so board clock skew does not matter.
    ``death_reason`` is the reason of a death that belongs to the current session, else None
    (also None when the device is offline only because it went silent).

    Attributes beyond the model and metrics: ``born`` is True when the birth of the current
    session was received; ``bd_seq`` is that birth's birth/death sequence number; ``gaps`` counts
    sequence gaps seen (``missed`` the message numbers skipped by them) and ``last_gap_at`` is
    the monitor's time of the latest; ``interval_s`` is the telemetry cadence estimated from the
    device's own timestamps, never below the timer period the birth announced (None while
    neither is known); ``inference_rate`` is
    inferences per second between the last two telemetry messages; ``telemetry`` and
    ``duplicates`` count telemetry received and telemetry seen twice (same ``(boot, n)``);
    ``agent_version`` comes from the birth.
    """

    fleet: str
    device_id: str
    state: str
    last_seen: float | None
    model_version: str | None
    model_sha256: str | None
    backend: str | None
    board: str | None
    labels: tuple[str, ...]
    n_classes: int
    inference_count: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    accuracy: float | None
    evaluated: int | None
    rss_bytes: int | None
    uptime_s: float | None
    last_seq: int | None
    death_reason: str | None
    session: int | None = None
    born: bool = False
    bd_seq: int | None = None
    gaps: int = 0
    missed: int = 0
    last_gap_at: float | None = None
    interval_s: float | None = None
    inference_rate: float | None = None
    telemetry: int = 0
    duplicates: int = 0
    agent_version: str | None = None


class SeenWindow:
    """Which telemetry numbers ``n`` of one boot were seen: a high-water mark plus a bitmask.

    Bit ``i`` of the mask says whether ``high - i`` was seen. Memory is bounded by
    :data:`REPLAY_WINDOW` bits whatever the device sends; Python ints make the shift cheap.
    """

    __slots__ = ("high", "mask")

    def __init__(self) -> None:
        self.high = -1
        self.mask = 0

    def add(self, n: int) -> str:
        """Record ``n``; return ``"new"``, ``"duplicate"`` or ``"unverifiable"`` (too old)."""
        if n > self.high:
            shift = n - self.high
            self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) \
                if shift < REPLAY_WINDOW else 1
            self.high = n
            return "new"
        bit = self.high - n
        if bit >= REPLAY_WINDOW:
            return "unverifiable"
        if (self.mask >> bit) & 1:
            return "duplicate"
        self.mask |= 1 << bit
        return "new"


@dataclass
class _Device:
    """Mutable per-device bookkeeping; only touched under the monitor's lock."""

    fleet: str
    device_id: str
    alive_session: int | None = None  # newest session seen alive (birth, telemetry, reply)
    death_session: int | None = None
    death_reason: str | None = None
    last_seen: float | None = None
    birth: Birth | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float | None = None  # monitor time when ``telemetry`` arrived
    born_session: int | None = None  # session of the newest birth received
    expected_seq: int | None = None  # next seq of the current session; None before its birth
    gaps: int = 0
    missed: int = 0
    last_gap_at: float | None = None
    last_rebirth_at: float | None = None
    interval_s: float | None = None
    inference_rate: float | None = None
    telemetry_count: int = 0
    duplicates: int = 0
    seen: dict[int, SeenWindow] = field(default_factory=dict)  # boot -> numbers seen

    @property
    def cadence_s(self) -> float | None:
        """The telemetry interval for the silence limit: the estimate from the device's
        timestamps, never below the timer period its birth announced (extra reports in between,
        e.g. answers to ``report`` commands, shrink the estimate but not the period)."""
        floor = self.birth.interval_s if self.birth is not None else None
        if floor is None:
            return self.interval_s
        return floor if self.interval_s is None else max(floor, self.interval_s)


_STAT_KEYS = ("messages", "telemetry", "telemetry_unique", "duplicates", "unverifiable",
              "gaps", "missed", "late", "errors", "rebirths_requested", "rebirths_suppressed",
              "overflow")


class FleetTracker:
    """Applies decoded birth/telemetry/death/reply messages to per-device state.

    Args:
        detect_gaps: Check ``seq`` continuity. Off for a monitor in a shared-subscription group,
            which sees only part of each device's messages.
        rebirth_interval_s: At most one rebirth request per device in this many seconds.
        max_devices: Most devices kept; a message of a further device is counted as
            ``overflow``, logged (at most once a minute) and otherwise ignored.

    Raises:
        ValueError: If ``max_devices`` is not a positive integer.
    """

    def __init__(self, detect_gaps: bool = True, rebirth_interval_s: float = 10.0,
                 max_devices: int = MAX_DEVICES) -> None:
        if isinstance(max_devices, bool) or not isinstance(max_devices, int) or max_devices < 1:
            raise ValueError(f"max_devices must be an integer >= 1, got {max_devices!r}")
        self.detect_gaps = detect_gaps
        self.rebirth_interval_s = rebirth_interval_s
        self.max_devices = max_devices
        self.devices: dict[tuple[str, str], _Device] = {}
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._overflow_logged_at: float | None = None

    def apply(self, msg: Birth | Telemetry | Death | Reply, now: float,
              retained: bool = False) -> str | None:
        """Apply one message (already checked against its topic).

        Args:
            msg: The decoded message.
            now: Monitor clock, unix seconds.
            retained: The broker delivered it from its retained store (a birth from before this
                monitor subscribed): the sequence restarts at whatever comes next.

        Returns:
            Why the device should be asked to re-publish its birth (gap, unknown session, ...),
            or None. Rate limiting is already applied: None also when a request was sent lately.
        """
        key = (msg.fleet, msg.device_id)
        dev = self.devices.get(key)
        if dev is None:
            if len(self.devices) >= self.max_devices:
                self._overflow(msg, now)
                return None
            dev = self.devices[key] = _Device(msg.fleet, msg.device_id)
        duplicate = False
        if isinstance(msg, Telemetry):
            duplicate = self._count_telemetry(dev, msg) == "duplicate"
        if isinstance(msg, Death):
            why = self._apply_death(dev, msg, now)
        elif isinstance(msg, Birth):
            why = self._apply_birth(dev, msg, now, retained)
        else:
            why = self._apply_alive(dev, msg, now, duplicate)
        if why is None:
            return None
        # 0 <=: after the host clock steps back, a request "in the future" must not silence the
        # device's requests until the clock has caught up (hours, perhaps).
        if (dev.last_rebirth_at is not None
                and 0 <= now - dev.last_rebirth_at < self.rebirth_interval_s):
            self.stats["rebirths_suppressed"] += 1
            return None
        dev.last_rebirth_at = now
        self.stats["rebirths_requested"] += 1
        return why

    def _overflow(self, msg: Birth | Telemetry | Death | Reply, now: float) -> None:
        self.stats["overflow"] += 1
        last = self._overflow_logged_at
        if last is None or not 0 <= now - last < _OVERFLOW_LOG_S:
            self._overflow_logged_at = now
            log.warning("device table full (%d devices): ignoring %s/%s and every other new "
                        "device (%d messages so far); raise max_devices if the fleet is really "
                        "this large", self.max_devices, msg.fleet, msg.device_id,
                        self.stats["overflow"])

    # --- per kind -------------------------------------------------------------------------------

    def _count_telemetry(self, dev: _Device, msg: Telemetry) -> str:
        # (boot, n) identifies a telemetry message whatever its session or seq, so replays and
        # QoS 1 redeliveries are recognised even across reconnects.
        self.stats["telemetry"] += 1
        dev.telemetry_count += 1
        window = dev.seen.pop(msg.boot, None)
        if window is None:
            if len(dev.seen) >= MAX_BOOTS_TRACKED:
                # The least recently heard boot, not the smallest ``boot``: that is the device's
                # clock at process start, and a board without an RTC can start a later boot with
                # an earlier clock; dropping the live boot's window would count replays twice.
                del dev.seen[next(iter(dev.seen))]
            window = SeenWindow()
        dev.seen[msg.boot] = window  # (re)inserted last: dicts keep insertion order
        verdict = window.add(msg.n)
        if verdict == "new":
            self.stats["telemetry_unique"] += 1
        elif verdict == "duplicate":
            self.stats["duplicates"] += 1
            dev.duplicates += 1
        else:
            self.stats["unverifiable"] += 1
        return verdict

    def _apply_death(self, dev: _Device, msg: Death, now: float) -> str | None:
        # Deaths from older sessions than one already known are stale (typically the retained
        # Last Will of the previous process) and must not mark a re-born device offline.
        if dev.death_session is not None and msg.session < dev.death_session:
            self.stats["late"] += 1
            return None
        if dev.alive_session is not None and msg.session < dev.alive_session:
            self.stats["late"] += 1
            return None
        if (msg.session == dev.born_session and dev.birth is not None
                and msg.bd_seq != dev.birth.bd_seq):
            # Sparkplug: a death must carry its birth's bd_seq. A mismatch means the two do not
            # belong together; the death is not trusted and the device is asked to re-birth.
            self.stats["late"] += 1
            return f"death bd_seq {msg.bd_seq} does not match birth bd_seq {dev.birth.bd_seq}"
        if msg.seq is not None and msg.session == dev.born_session:
            # A graceful death still counts for the sequence (a gap before it is reported), but
            # asking a device that is leaving to re-birth is pointless.
            self._check_seq(dev, msg.seq, now)
        dev.death_session = msg.session
        dev.death_reason = msg.reason
        dev.expected_seq = None  # the connection is over; the next one starts with a birth
        return None

    def _apply_birth(self, dev: _Device, msg: Birth, now: float, retained: bool) -> str | None:
        if dev.alive_session is not None and msg.session < dev.alive_session:
            self.stats["late"] += 1
            return None
        if dev.alive_session is not None and msg.session > dev.alive_session:
            dev.telemetry = None  # metrics of the previous connection no longer apply
            dev.inference_rate = None
        dev.alive_session = dev.born_session = msg.session
        dev.last_seen = now
        dev.birth = msg
        # A retained birth may be hours old: messages sent since were not for this monitor, so
        # they are not a gap.
        dev.expected_seq = RESYNC if retained else (msg.seq + 1) % SEQ_MODULUS
        return None

    def _apply_alive(self, dev: _Device, msg: Telemetry | Reply, now: float,
                     duplicate: bool = False) -> str | None:
        if dev.alive_session is not None and msg.session < dev.alive_session:
            self.stats["late"] += 1
            return None  # a late message of a previous connection
        if dev.alive_session is not None and msg.session > dev.alive_session:
            dev.telemetry = None
            dev.inference_rate = None
        dev.alive_session = msg.session
        dev.last_seen = now
        if isinstance(msg, Telemetry) and not duplicate:
            self._update_metrics(dev, msg, now)
        if dev.born_session != msg.session:
            # A message of a connection whose birth this monitor never saw (started late on a
            # broker without the retained birth, or the birth was lost): ask for one.
            dev.expected_seq = None
            return ("never born" if dev.born_session is None
                    else f"no birth for session {msg.session}")
        return self._check_seq(dev, msg.seq, now, duplicate)

    def _check_seq(self, dev: _Device, seq: int, now: float,
                   duplicate: bool = False) -> str | None:
        if not self.detect_gaps or dev.expected_seq is None:
            return None
        expected = dev.expected_seq
        if expected == RESYNC:
            dev.expected_seq = (seq + 1) % SEQ_MODULUS
            return None
        ahead = (seq - expected) % SEQ_MODULUS
        if duplicate and ahead >= _HALF:
            # A telemetry message already counted by (boot, n) with a seq behind: the very same
            # packet delivered again. (A replay re-sent with a fresh seq is ahead, and checked.)
            return None
        dev.expected_seq = (seq + 1) % SEQ_MODULUS
        if ahead == 0:
            return None
        # Any other seq is a gap, however far ahead: with clean sessions and a resync on every
        # reconnect of the monitor, a connection sees no redeliveries except the duplicates
        # above. Reading a jump of 128+ as "behind" would leave the check stuck after a big loss
        # until seq wrapped. The loss may exceed ``ahead`` by multiples of 256.
        self.stats["gaps"] += 1
        self.stats["missed"] += ahead
        dev.gaps += 1
        dev.missed += ahead
        dev.last_gap_at = now
        return f"sequence gap: expected seq {expected}, got {seq} ({ahead} missing)"

    @staticmethod
    def _update_metrics(dev: _Device, msg: Telemetry, now: float) -> None:
        prev = dev.telemetry
        if msg.replayed and (prev is not None or dev.born_session == msg.session):
            # A spool replay is older than anything live: the reporter sends it after the birth
            # and before fresh telemetry. Whether from this boot or an earlier one (possibly
            # with another model), it must not replace what is shown; it is still counted.
            return
        if prev is not None and prev.boot == msg.boot and msg.n <= prev.n:
            return  # a replay or redelivery of something older: keep the newest metrics
        if (prev is not None and prev.boot == msg.boot and msg.ts > prev.ts
                and _plausible_step(msg.ts - prev.ts, dev.telemetry_at, now)):
            # Device timestamps, not arrival times: replayed bursts would distort the cadence.
            dt = msg.ts - prev.ts
            step = _ratio(dt, msg.n - prev.n)
            if step is not None:
                dev.interval_s = step if dev.interval_s is None else \
                    dev.interval_s + _EWMA * (step - dev.interval_s)
            if msg.inference_count >= prev.inference_count:
                dev.inference_rate = _ratio(msg.inference_count - prev.inference_count, dt)
        dev.telemetry = msg
        dev.telemetry_at = now

    def resync(self) -> None:
        """Forget every expected seq, e.g. after the monitor's own reconnect (it missed messages
        that no device lost); each device's next message sets the sequence again."""
        for dev in self.devices.values():
            if dev.expected_seq is not None:
                dev.expected_seq = RESYNC

    # --- queries --------------------------------------------------------------------------------

    def states(self, now: float, silence_limit: Callable[[float | None], float]) -> list[DeviceState]:
        """Every device's state, sorted by fleet then device id.

        Args:
            now: Monitor clock, unix seconds.
            silence_limit: Maps a device's cadence (``interval_s`` or None) to the seconds of
                silence after which it counts as offline.
        """
        devices = sorted(self.devices.values(), key=lambda d: (d.fleet, d.device_id))
        return [_state_of(d, now, silence_limit(d.cadence_s)) for d in devices]

    def stats_dict(self) -> dict[str, Any]:
        """A copy of the counters plus the number of devices."""
        out: dict[str, Any] = dict(self.stats)
        out["devices"] = len(self.devices)
        return out


def _plausible_step(device_dt: float, prev_at: float | None, now: float) -> bool:
    """Whether ``device_dt`` seconds of device time fit the monitor's time between arrivals."""
    if prev_at is None:
        return True
    return device_dt <= _CLOCK_STEP_FACTOR * max(0.0, now - prev_at) + _CLOCK_STEP_SLACK_S


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` as a finite float, or None.

    Counters are unbounded JSON integers (10**400 is a valid ``inference_count``) and device
    timestamps may be 5e-324 apart: an OverflowError here would turn a valid message into an
    "internal error" before its ``seq`` is checked, and ``inf`` is not JSON.
    """
    try:
        value = num / den
    except (OverflowError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _state_of(dev: _Device, now: float, limit_s: float) -> DeviceState:
    alive = dev.alive_session
    dead = dev.death_session
    # A death of the same session as the newest birth/telemetry wins: the device said goodbye
    # (or the broker did for it) after its birth.
    killed = dead is not None and (alive is None or dead >= alive)
    silent = dev.last_seen is None or now - dev.last_seen > limit_s
    online = alive is not None and not killed and not silent
    b, t = dev.birth, dev.telemetry
    # Telemetry is newer than the birth when both exist (the model may have been swapped).
    src = t if t is not None else b
    labels = tuple(src.labels) if src is not None else ()
    born = b is not None and dev.born_session == alive
    return DeviceState(
        fleet=dev.fleet,
        device_id=dev.device_id,
        state="online" if online else "offline",
        last_seen=dev.last_seen,
        model_version=src.model_version if src else None,
        model_sha256=src.model_sha256 if src else None,
        backend=b.backend if b else None,
        board=b.board if b else None,
        labels=labels,
        n_classes=t.n_classes if t else len(labels),
        inference_count=t.inference_count if t else None,
        latency_p50_ms=t.latency_p50_ms if t else None,
        latency_p95_ms=t.latency_p95_ms if t else None,
        accuracy=t.accuracy if t else None,
        evaluated=t.evaluated if t else None,
        rss_bytes=t.rss_bytes if t else None,
        uptime_s=t.uptime_s if t else None,
        last_seq=t.seq if t else None,
        death_reason=dev.death_reason if killed else None,
        session=max((s for s in (alive, dead) if s is not None), default=None),
        born=born,
        bd_seq=b.bd_seq if b else None,
        gaps=dev.gaps,
        missed=dev.missed,
        last_gap_at=dev.last_gap_at,
        interval_s=dev.cadence_s,
        inference_rate=dev.inference_rate,
        telemetry=dev.telemetry_count,
        duplicates=dev.duplicates,
        agent_version=b.agent_version if b else None,
    )
