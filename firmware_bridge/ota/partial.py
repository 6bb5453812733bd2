"""A half-received bundle on the board's disk, kept so that a transfer resumes, not restarts.

Layout, one directory per bundle (``HOME/ota/<first 16 hex digits of its SHA-256>/``)::

    offer.json    what is being received (SHA-256, size, chunk size, version); written atomically
    bundle.part   the bundle's bytes, preallocated to full size; chunks are written at their offset
    held.log      append-only records ``index (u32) | SHA-256 of the chunk (32 bytes)``

A record is appended only after its chunk was written. On reopen every recorded chunk is read back
and re-hashed, so a torn record, a chunk lost in a power cut or a bit flip on the card simply means
the chunk is asked for again. The whole bundle is verified against the offer's SHA-256 at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

from edgemeta.bundle import atomic_write_bytes
from firmware_bridge.ota.chunkset import ChunkBitmap
from firmware_bridge.ota.protocol import Offer

__all__ = ["PartialBundle", "partial_dir"]

_RECORD = struct.Struct(">I32s")
_META = ("bundle_sha256", "bundle_bytes", "chunk_bytes", "chunks", "version")


def partial_dir(ota_root: Path, bundle_sha256: str) -> Path:
    return ota_root / bundle_sha256[:16]


class PartialBundle:
    """The on-disk state of one bundle being received; not thread-safe (the receiver locks).

    ``held`` is a :class:`ChunkBitmap` of the chunks written and recorded (``len(held)`` counts
    them); the chunks' hashes live only in ``held.log``.
    """

    def __init__(self, directory: Path, offer: Offer, held: ChunkBitmap, fd: int,
                 log_fd: int) -> None:
        self.dir = directory
        self.offer = offer
        self.held = held
        self._fd = fd
        self._log_fd = log_fd

    @property
    def part_path(self) -> Path:
        return self.dir / "bundle.part"

    @classmethod
    def open(cls, ota_root: Path, offer: Offer) -> "PartialBundle":
        """Resume the partial copy of ``offer``'s bundle, or start a fresh one.

        Raises:
            OSError: The directory or the preallocated file cannot be created (ENOSPC included);
                nothing is left behind in that case.
        """
        directory = partial_dir(ota_root, offer.bundle_sha256)
        meta = {k: getattr(offer, k) for k in _META}
        if directory.is_dir():
            held = cls._resume(directory, offer, meta)
            if held is not None:
                return cls(directory, offer, held[0], held[1], held[2])
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        try:
            atomic_write_bytes(directory / "offer.json", json.dumps(meta).encode())
            fd = os.open(directory / "bundle.part", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _preallocate(fd, offer.bundle_bytes)
                log_fd = os.open(directory / "held.log",
                                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, offer, ChunkBitmap(offer.chunks), fd, log_fd)

    @staticmethod
    def _resume(directory: Path, offer: Offer,
                meta: dict) -> tuple[ChunkBitmap, int, int] | None:
        try:
            if json.loads((directory / "offer.json").read_text()) != meta:
                return None  # same bundle, other chunk size: start over
            part = directory / "bundle.part"
            if part.stat().st_size != offer.bundle_bytes:
                return None
            # At most one record per chunk was ever appended: anything beyond is not ours.
            with open(directory / "held.log", "rb") as fh:
                log_bytes = fh.read(offer.chunks * _RECORD.size)
        except (OSError, ValueError):
            return None
        fd = os.open(part, os.O_RDWR)
        try:
            held = ChunkBitmap(offer.chunks)
            records = bytearray()
            usable = len(log_bytes) - len(log_bytes) % _RECORD.size  # drop a torn last record
            for pos in range(0, usable, _RECORD.size):
                index, digest = _RECORD.unpack_from(log_bytes, pos)
                if index >= offer.chunks or index in held:
                    continue
                data = os.pread(fd, offer.chunk_size(index), index * offer.chunk_bytes)
                if hashlib.sha256(data).digest() == digest:
                    held.add(index)
                    records += log_bytes[pos:pos + _RECORD.size]
            # Rewrite the log with only the verified records so that appends stay aligned.
            atomic_write_bytes(directory / "held.log", bytes(records))
            log_fd = os.open(directory / "held.log", os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(fd)  # e.g. the card is full or read-only: the caller reports it
            raise
        return held, fd, log_fd

    def write(self, index: int, data: bytes, digest: bytes) -> None:
        """Write one verified chunk at its offset, then record it; OSError on a full disk."""
        offset = index * self.offer.chunk_bytes
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        os.write(self._log_fd, _RECORD.pack(index, digest))
        self.held.add(index)

    def sha256(self) -> str:
        """SHA-256 of the whole part file (after fsync), to compare with the offer."""
        os.fsync(self._fd)
        h = hashlib.sha256()
        pos = 0
        while pos < self.offer.bundle_bytes:
            block = os.pread(self._fd, min(1 << 20, self.offer.bundle_bytes - pos), pos)
            if not block:
                break
            h.update(block)
            pos += len(block)
        return h.hexdigest()

    def finish(self) -> Path:
        """Close the files and rename the part file to ``bundle.edgemeta``; return its path."""
        self.close()
        final = self.dir / "bundle.edgemeta"
        os.replace(self.part_path, final)
        return final

    def close(self) -> None:
        for fd in (self._fd, self._log_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._log_fd = -1

    def remove(self) -> None:
        """Close and delete the whole directory (best effort)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _preallocate(fd: int, size: int) -> None:
    # posix_fallocate reserves the blocks, so a card that is too full fails now (ENOSPC), before
    # anything is transferred, rather than half-way through. Filesystems without support (FAT on
    # some kernels) get a sparse file, and a full disk then shows up as ENOSPC on a chunk write.
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            import errno

            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                raise
    os.ftruncate(fd, size)
