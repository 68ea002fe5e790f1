"""A view of a source limited to the positions [lo, hi): what a rank's key check reads, so that each rank checks
its own range only (keys shared across ranks are caught when the ranks' results are merged by `export`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from .base import Block, Source, Wanted


class RangeView:
    """count() and the key column cover [lo, hi) only; positions stay the source's own (absolute)."""

    def __init__(self, source: Source, lo: int, hi: int):
        self.source, self.lo, self.hi = source, lo, hi

    def describe(self) -> str:
        return f"{self.source.describe()} positions {self.lo}..{self.hi - 1}"

    def identity(self) -> dict:
        return self.source.identity()

    def count(self) -> int:
        return self.hi - self.lo

    def key_batches(self, key: str) -> Iterator[pa.Array] | None:
        batches = self.source.key_batches(key)
        return None if batches is None else self._sliced(batches)

    def _sliced(self, batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        pos = 0
        for chunk in batches:  # keys before the range are read by Arrow (C), not parsed as records
            end = pos + len(chunk)
            if end > self.lo:
                yield chunk.slice(max(0, self.lo - pos), min(end, self.hi) - max(pos, self.lo))
            if end >= self.hi:
                return
            pos = end

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        keys = self.source.key_column(key)
        return None if keys is None else keys.slice(self.lo, self.hi - self.lo)

    def where(self, line: Any) -> str:
        return self.source.where(line)

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        return self.source.blocks(self._within(wanted), self._end(end), columnar)

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        return self.source.rows(self._within(wanted), self._end(end))

    def _within(self, wanted: Wanted) -> Wanted:
        return lambda p: p >= self.lo and wanted(p)

    def _end(self, end: int | None) -> int:
        return self.hi if end is None else min(end, self.hi)
