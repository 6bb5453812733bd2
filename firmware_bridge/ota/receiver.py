"""Board side of over-the-air flashing: a state machine fed with MQTT messages.

:class:`OtaReceiver` knows nothing about MQTT clients: it is given each message with
:meth:`~OtaReceiver.handle` and publishes through a ``publish(topic, payload)`` function, so it is
tested without a broker and runs on any connection (see :mod:`firmware_bridge.ota.board`).

Board-side safe: no TensorFlow, no edgemeta.data/meta/quantize.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemeta.bundle import BoardHome, read_config
from edgemeta.errors import BundleError, FlashError, MessageError
from firmware_bridge.install import InstallResult
from firmware_bridge.ota.chunkset import RangeSet
from firmware_bridge.ota.partial import PartialBundle
from firmware_bridge.ota.protocol import (
    ACK_EVERY, MAX_RANGES, ChunkError, Offer, Status, decode_chunk, decode_offer, ota_topic,
    parse_ota_topic,
)

__all__ = ["OtaReceiver", "REJECT_KINDS"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Any]
# Why a message was dropped. Each only increments a counter: nothing on disk changes.
REJECT_KINDS = ("malformed", "oversized", "foreign", "foreign-transfer", "out-of-order",
                "duplicate", "corrupt")
_FREE_MARGIN = 1 << 20  # keep 1 MiB free beyond the part file and the installed copy
_FINISHED_KEPT = 16
_HASH_BLOCK = 1 << 18
OTA_DOWNGRADE_HINT = (
    "this board refuses downgrades requested over the air (anyone who can publish to its OTA "
    "topics could otherwise install an old, flawed bundle); to allow them, run "
    "'edgemeta board init HOME --allow-ota-downgrade' on the board, or flash it with "
    "--allow-downgrade over ssh:// or dir:")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _install(path: Path, home: BoardHome, **kw: Any) -> InstallResult:
    from firmware_bridge.install import install_bundle

    return install_bundle(path, home, **kw)


class OtaReceiver:
    """Receives bundles offered to one device, resumes interrupted transfers, installs them.

    Args:
        home: The board home; partial transfers live under ``HOME/ota/``.
        device_id: This board's id; offers and chunks for any other id are rejected.
        fleet: This board's fleet id.
        publish: ``publish(topic, payload)``; the caller sends it with QoS 1.
        install: ``install(path, home, allow_downgrade=...)``, by default
            :func:`firmware_bridge.install.install_bundle`.
        install_options: Extra keyword arguments for ``install`` (e.g. ``health_check=False``).
        on_installed: Called with the :class:`InstallResult` after a successful install (the
            agent reloads its model there); exceptions are logged, never propagated.
        clock: Monotonic seconds; injectable for tests.
        stall_s: After this long without a chunk, :meth:`tick` asks again for what is missing.
        max_need_retries: How often it asks before giving up (the partial copy stays on disk).
        ack_every: Acknowledge progress every this many chunks.
    """

    def __init__(self, home: BoardHome | str | Path, device_id: str, fleet: str,
                 publish: Publish, *, install: Callable[..., InstallResult] = _install,
                 install_options: dict[str, Any] | None = None,
                 on_installed: Callable[[InstallResult], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, stall_s: float = 5.0,
                 max_need_retries: int = 5, ack_every: int = ACK_EVERY) -> None:
        self.home = home if isinstance(home, BoardHome) else BoardHome.at(home)
        self.device_id = device_id
        self.fleet = fleet
        self._publish_fn = publish
        self._install = install
        self._install_options = dict(install_options or {})
        self._on_installed = on_installed
        self._clock = clock
        self._stall_s = stall_s
        self._max_retries = max_need_retries
        self._ack_every = max(1, ack_every)
        self._status_topic = ota_topic(fleet, device_id, "status")
        self._lock = threading.RLock()
        self.rejected: Counter[str] = Counter()
        self._active: PartialBundle | None = None
        self._requested = RangeSet()  # the ranges of the last `need`, and how many are still due
        self._sha_cache: tuple[tuple, str] | None = None
        self._since_ack = 0
        self._last_activity = 0.0
        self._retries = 0
        self._finished: dict[str, Status] = {}
        self.last_status: Status | None = None

    @property
    def ota_root(self) -> Path:
        return self.home.root / "ota"

    @property
    def active_transfer(self) -> str | None:
        """Transfer id being received, or None."""
        a = self._active
        return a.offer.transfer_id if a is not None else None

    # --- entry points -----------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes | bytearray) -> None:
        """Apply one MQTT message; never raises (a bad message is counted and logged)."""
        with self._lock:
            try:
                fleet, device, kind = parse_ota_topic(topic)
            except MessageError as exc:
                self._reject("malformed", str(exc))
                return
            if (fleet, device) != (self.fleet, self.device_id):
                self._reject("foreign", f"{kind} on {topic} is for {fleet}/{device}")
                return
            try:
                if kind == "offer":
                    self._on_offer(payload)
                elif kind == "chunk":
                    self._on_chunk(payload)
                # a status on our own topic is our own echo: nothing to do
            except Exception:  # noqa: BLE001 - the board must survive anything on the wire
                log.exception("OTA receiver of %s failed on %s", self.device_id, topic)

    def close(self) -> None:
        """Close the transfer in progress (its partial copy stays on disk for a later resume)."""
        with self._lock:
            if self._active is not None:
                self._active.close()
                self._active = None
            self._requested = RangeSet()

    def tick(self) -> None:
        """Ask again for missing chunks when they stopped arriving (call every ~second)."""
        with self._lock:
            a = self._active
            if a is None or self._clock() - self._last_activity < self._stall_s:
                return
            if self._retries >= self._max_retries:
                log.warning("OTA %s of %s stalled at %d/%d chunks; keeping the partial copy for "
                            "a later resume", a.offer.transfer_id, a.offer.version, len(a.held),
                            a.offer.chunks)
                self.close()
                return
            self._retries += 1
            self._publish_need()

    # --- offers -----------------------------------------------------------------------------------

    def _on_offer(self, payload: bytes | bytearray) -> None:
        try:
            offer = decode_offer(payload)
        except MessageError as exc:
            self._reject("malformed", str(exc))
            return
        if (offer.fleet, offer.device) != (self.fleet, self.device_id):
            self._reject("foreign", f"offer {offer.transfer_id} names {offer.fleet}/{offer.device}")
            self._send(Status(offer.transfer_id, self.fleet, self.device_id, "rejected",
                              chunks=offer.chunks, version=offer.version, reason="foreign",
                              current_version=self._current(), message=(
                                  f"offer names {offer.fleet}/{offer.device}, this board is "
                                  f"{self.fleet}/{self.device_id}")))
            return
        done = self._finished.get(offer.transfer_id)
        if done is not None:  # a redelivered offer of a finished transfer: same answer
            self._send(done)
            return
        a = self._active
        if a is not None and a.offer.transfer_id == offer.transfer_id:
            self._publish_need()  # a re-offer: the host lost track; tell it what is missing
            return
        if a is not None:
            # The newest offer wins: close the transfer in progress before anything on disk
            # changes, and tell its sender (a re-offer of it gets the same answer).
            self.close()
            self._supersede(a.offer, offer)
        if self._current_sha256() == offer.bundle_sha256:
            self._drop_partials(keep=None)
            self._finish_status(offer, "installed", changed=False, path=self._current_path(),
                                message=f"{offer.version} is already installed and current")
            return
        keep = offer.bundle_sha256[:16]
        self._drop_partials(keep=keep)  # another bundle's leftovers only take space now
        if not self._enough_space(offer):
            return
        try:
            self.ota_root.mkdir(parents=True, exist_ok=True)
            part = PartialBundle.open(self.ota_root, offer)
        except OSError as exc:
            self._io_failed(offer, exc, "preparing the transfer")
            return
        self._active = part
        self._retries = 0
        self._last_activity = self._clock()
        if len(part.held) == offer.chunks:
            self._complete()
        else:
            self._publish_need()

    def _enough_space(self, offer: Offer) -> bool:
        # The part file and then the installed copy both need the bundle's size.
        resumed = (self.ota_root / offer.bundle_sha256[:16] / "bundle.part").exists()
        needed = offer.bundle_bytes * (1 if resumed else 2) + _FREE_MARGIN
        probe = self.home.root if self.home.root.exists() else self.home.root.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return True  # cannot tell: try, a full disk still fails cleanly on write
        if free >= needed:
            return True
        self._finish_status(offer, "rejected", reason="disk-full", message=(
            f"not enough disk space for {offer.version}: needs {needed} bytes, {free} free; "
            f"{self._kept()}"))
        return False

    # --- chunks -----------------------------------------------------------------------------------

    def _on_chunk(self, payload: bytes | bytearray) -> None:
        try:
            chunk = decode_chunk(payload)
        except ChunkError as exc:
            self._reject(exc.kind, str(exc))
            return
        a = self._active
        if a is None or chunk.transfer_id != a.offer.transfer_id:
            kind = "duplicate" if chunk.transfer_id in self._finished else "foreign-transfer"
            self._reject(kind, f"chunk {chunk.index} of transfer {chunk.transfer_id}, active: "
                               f"{a.offer.transfer_id if a else 'none'}")
            return
        offer = a.offer
        if chunk.index in a.held:
            self._reject("duplicate", f"chunk {chunk.index} is already held")
            return
        if chunk.index >= offer.chunks or chunk.index not in self._requested:
            self._reject("out-of-order", f"chunk {chunk.index} was not asked for "
                                         f"({offer.chunks} chunks in all)")
            return
        if len(chunk.data) != offer.chunk_size(chunk.index) or not chunk.verify():
            self._reject("corrupt", f"chunk {chunk.index}: {len(chunk.data)} bytes, expected "
                                    f"{offer.chunk_size(chunk.index)} matching its SHA-256")
            return
        try:
            a.write(chunk.index, chunk.data, chunk.sha256)
        except OSError as exc:
            self._io_failed(offer, exc, f"writing chunk {chunk.index}")
            return
        self._requested.take(chunk.index)
        self._last_activity = self._clock()
        self._retries = 0
        self._since_ack += 1
        if len(a.held) == offer.chunks:
            self._complete()
        elif not self._requested:
            self._publish_need()  # the last `need` was capped: ask for the next ranges
        elif self._since_ack >= self._ack_every:
            self._since_ack = 0
            self._send(self._status(offer, "receiving"))

    # --- completion -------------------------------------------------------------------------------

    def _complete(self) -> None:
        a = self._active
        assert a is not None
        offer = a.offer
        self._send(self._status(offer, "installing"))
        try:
            digest = a.sha256()
            if digest != offer.bundle_sha256:
                a.remove()
                self._active = None
                self._finish_status(offer, "failed", reason="damaged", message=(
                    f"reassembled bundle has SHA-256 {digest[:12]}..., the offer said "
                    f"{offer.bundle_sha256[:12]}...; partial copy removed, {self._kept()}"))
                return
            path = a.finish()
        except OSError as exc:
            self._io_failed(offer, exc, "verifying the received bundle")
            return
        # An offer is not authenticated (anyone who can publish to our topics can send one), so
        # its allow_downgrade counts only if this home's own config says so.
        downgrade_ok = offer.allow_downgrade and self._ota_downgrade_allowed()
        try:
            result = self._install(path, self.home, allow_downgrade=downgrade_ok,
                                   **self._install_options)
        except FlashError as exc:
            reason = getattr(exc, "reason", None) or "io"
            text = str(exc)
            if reason == "downgrade" and offer.allow_downgrade and not downgrade_ok:
                # The sender already asked for the downgrade: say why this board refuses it,
                # not "pass --allow-downgrade" as the install's own message does.
                text = (f"bundle {offer.version} is older than the current version "
                        f"{self.home.current_version()}, and {OTA_DOWNGRADE_HINT}")
            self._finish_status(offer, "failed", reason=reason, message=f"{text}; {self._kept()}")
            return
        except Exception as exc:  # noqa: BLE001 - report, keep the board alive
            log.exception("install of %s failed unexpectedly", offer.version)
            self._finish_status(offer, "failed", reason="io",
                                message=f"install failed: {exc!r}; {self._kept()}")
            return
        finally:
            a.remove()
            self._active = None
        self._finish_status(offer, "installed", changed=result.changed,
                            previous=result.previous_version, path=str(result.path),
                            message=f"installed {result.version}" if result.changed
                            else f"{result.version} was already installed")
        if self._on_installed is not None:
            try:
                self._on_installed(result)
            except Exception:  # noqa: BLE001 - the install itself succeeded
                log.exception("on_installed callback of %s failed", self.device_id)

    def _io_failed(self, offer: Offer, exc: OSError, doing: str) -> None:
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
        if self._active is not None:
            self._active.remove()
            self._active = None
        else:
            shutil.rmtree(self.ota_root / offer.bundle_sha256[:16], ignore_errors=True)
        what = "disk full" if full else f"I/O error ({exc})"
        self._finish_status(offer, "failed", reason="disk-full" if full else "io",
                            message=f"{what} while {doing}; partial copy removed, {self._kept()}")

    # --- helpers ----------------------------------------------------------------------------------

    def _current(self) -> str | None:
        try:
            return self.home.current_version()
        except BundleError:
            return None

    def _current_sha256(self) -> str | None:
        """SHA-256 of the current bundle, hashed again only when the pointer or the file changed."""
        try:
            version = self.home.current_version()
            path = self.home.current_bundle()
            st = path.stat()
            key = (version, str(path), st.st_ino, st.st_mtime_ns, st.st_size)
            if self._sha_cache is not None and self._sha_cache[0] == key:
                return self._sha_cache[1]
            digest = _file_sha256(path)
        except (BundleError, OSError):
            return None
        self._sha_cache = (key, digest)
        return digest

    def _ota_downgrade_allowed(self) -> bool:
        try:
            return bool(read_config(self.home).allow_ota_downgrade)
        except BundleError as exc:  # a damaged board.json: fail closed
            log.warning("cannot read the board config of %s (%s): refusing OTA downgrades",
                        self.device_id, exc)
            return False

    def _supersede(self, old: Offer, new: Offer) -> None:
        self._finish_status(old, "failed", reason="superseded", message=(
            f"transfer of {old.version} stopped: a newer offer ({new.version}, transfer "
            f"{new.transfer_id[:8]}) replaced it; {self._kept()}"))

    def _current_path(self) -> str | None:
        try:
            return str(self.home.current_bundle())
        except BundleError:
            return None

    def _kept(self) -> str:
        cur = self._current()
        return f"{cur} stays current" if cur else "no model was current and none is now"

    def _drop_partials(self, keep: str | None) -> None:
        if not self.ota_root.is_dir():
            return
        for d in self.ota_root.iterdir():
            if d.is_dir() and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)

    def _status(self, offer: Offer, state: str, **kw: Any) -> Status:
        a = self._active
        held = len(a.held) if a is not None and a.offer is offer else 0
        return Status(offer.transfer_id, self.fleet, self.device_id, state,
                      received=kw.pop("received", held), chunks=offer.chunks,
                      version=offer.version, current_version=self._current(),
                      rejected=sum(self.rejected.values()), **kw)

    def _publish_need(self) -> None:
        a = self._active
        assert a is not None
        ranges = a.held.missing_ranges(MAX_RANGES)
        self._requested = RangeSet(ranges)
        self._since_ack = 0
        self._last_activity = self._clock()
        self._send(self._status(a.offer, "need", need=tuple(ranges)))

    def _finish_status(self, offer: Offer, state: str, *, reason: str | None = None,
                       message: str | None = None, changed: bool = False,
                       previous: str | None = None, path: str | None = None) -> None:
        status = self._status(offer, state, received=offer.chunks if state == "installed" else 0,
                              reason=reason, message=(message or "")[:1000] or None,
                              changed=changed, previous_version=previous, path=path)
        self._finished[offer.transfer_id] = status
        while len(self._finished) > _FINISHED_KEPT:
            self._finished.pop(next(iter(self._finished)))
        if state != "installed":
            log.warning("OTA %s of %s %s: %s", offer.transfer_id[:8], offer.version, state, message)
        self._send(status)

    def _send(self, status: Status) -> None:
        self.last_status = status
        try:
            self._publish_fn(self._status_topic, status.to_payload())
        except Exception:  # noqa: BLE001 - a lost status is recovered by the host's re-offer
            log.warning("could not publish OTA status of %s", self.device_id, exc_info=True)

    def _reject(self, kind: str, why: str) -> None:
        self.rejected[kind] += 1
        log.info("OTA %s rejected a message (%s): %s", self.device_id, kind, why)
