"""Sets of source positions kept as sorted, merged [start, end) intervals: what a shard covers, what is done.

The ledger stores one small blob per shard instead of one row per item, which keeps commits cheap."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class From:
    """Every position from `lo` on: what a fresh run wants. select() makes a block's positions in C."""

    lo: int = 0

    def __call__(self, pos: int) -> bool:
        return pos >= self.lo


def select(wanted: Callable[[int], bool], lo: int, hi: int) -> list[int]:
    """The positions in [lo, hi) that `wanted` accepts, in order."""
    if type(wanted) is From:
        return list(range(max(lo, wanted.lo), hi))
    return list(filter(wanted, range(lo, hi)))


def from_sorted(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Spans of distinct positions in increasing order."""
    if isinstance(positions, list) and positions and positions[-1] - positions[0] + 1 == len(positions):
        return [(positions[0], positions[-1] + 1)]  # distinct and increasing, so contiguous: the common case
    spans: list[tuple[int, int]] = []
    start = end = None
    for p in positions:
        if end is not None and p == end:
            end += 1
            continue
        if start is not None:
            spans.append((start, end))
        start, end = p, p + 1
    if start is not None:
        spans.append((start, end))
    return spans


def encode(spans: list[tuple[int, int]]) -> bytes:
    return array("q", [v for span in spans for v in span]).tobytes()


def decode(blob: bytes) -> list[tuple[int, int]]:
    flat = array("q")
    flat.frombytes(blob)
    return list(zip(flat[::2], flat[1::2], strict=True))


def count(spans: list[tuple[int, int]]) -> int:
    """How many positions the spans hold."""
    return sum(e - s for s, e in spans)


def expand(spans: list[tuple[int, int]]) -> list[int]:
    return [p for start, end in spans for p in range(start, end)]


class Intervals:
    """A union of spans with fast membership; positions are checked in any order."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()):
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def __contains__(self, pos: int) -> bool:
        i = bisect_right(self._starts, pos) - 1
        return i >= 0 and pos < self._ends[i]

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def count_below(self, limit: int) -> int:
        """How many positions in [0, limit) are in the set."""
        total = 0
        for s, e in zip(self._starts, self._ends, strict=True):
            if s >= limit:
                break
            total += min(e, limit) - s
        return total

    def covers(self, start: int, end: int) -> bool:
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end
