"""Bounded bookkeeping of chunk indices: a bitmap of held chunks and a handful of ranges.

An offer has at most :data:`~firmware_bridge.ota.protocol.MAX_CHUNKS` chunks (65,536), so a
bitmap is at most 8 KiB; nothing here keeps one Python object per chunk. Board-side safe: stdlib.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["ChunkBitmap", "RangeSet"]


class ChunkBitmap:
    """Which of ``size`` chunks are present: one bit each, with a running count."""

    __slots__ = ("_bits", "_count", "size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"bitmap size {size}: expected >= 0")
        self.size = size
        self._bits = bytearray((size + 7) // 8)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self.size:
            return False
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Mark ``index`` present; True if it was not before. IndexError outside 0..size-1."""
        if not 0 <= index < self.size:
            raise IndexError(f"chunk {index} outside 0..{self.size - 1}")
        mask = 1 << (index & 7)
        if self._bits[index >> 3] & mask:
            return False
        self._bits[index >> 3] |= mask
        self._count += 1
        return True

    @property
    def complete(self) -> bool:
        return self._count == self.size

    def missing_ranges(self, limit: int) -> list[tuple[int, int]]:
        """The first ``limit`` ``[start, end)`` ranges of absent chunks, in order.

        Whole bytes are skipped at a time, so this costs at most ``size / 8`` steps plus the
        length of the ranges' edges, never one step per chunk of a long run.
        """
        out: list[tuple[int, int]] = []
        i = 0
        while i < self.size and len(out) < limit:
            i = self._next(i, present=False)
            if i >= self.size:
                break
            end = self._next(i, present=True)
            out.append((i, end))
            i = end
        return out

    def _next(self, i: int, present: bool) -> int:
        """First index >= i whose bit equals ``present`` (or ``size``)."""
        full = 0xFF if not present else 0x00  # bytes to skip wholesale
        bits = self._bits
        while i < self.size:
            if i & 7 == 0:
                pos = i >> 3
                while pos < len(bits) and bits[pos] == full:
                    pos += 1
                i = pos << 3
                if i >= self.size:
                    return self.size
            if bool(bits[i >> 3] & (1 << (i & 7))) == present:
                return i
            i += 1
        return self.size


class RangeSet:
    """A few disjoint ``[start, end)`` ranges (at most a ``need``'s worth) and what is left of them.

    ``take(i)`` counts an index off once (the caller makes sure each index arrives once, e.g. by
    checking a :class:`ChunkBitmap` first); ``remaining`` is how many have not arrived.
    """

    __slots__ = ("_ranges", "_starts", "remaining")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._ranges = sorted((int(a), int(b)) for a, b in ranges if a < b)
        self._starts = [a for a, _ in self._ranges]
        self.remaining = sum(b - a for a, b in self._ranges)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        pos = bisect_right(self._starts, index) - 1
        return pos >= 0 and index < self._ranges[pos][1]

    def __bool__(self) -> bool:
        return self.remaining > 0

    def take(self, index: int) -> None:
        if index in self and self.remaining > 0:
            self.remaining -= 1
