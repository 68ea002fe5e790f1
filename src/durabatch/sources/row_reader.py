"""Reading the rows at given positions, inside a Ray actor (`ray_reads = "actors"`): the driver sends positions
and keys only, each actor opens the input files itself. One reader serves an actor for the whole run, so what it
learns stays: where each file starts, bookmarks into JSON lines files (a read seeks to the last one at or before
its first position instead of reading from the file's start), the last Parquet row group read.

Rows are exactly what `FileSource(paths).rows()` gives for the same positions, bad rows included."""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pyarrow as pa

from ..columns import ArrowRecords, join
from ..errors import ConfigError, InputError
from .base import BadRow
from .files import FileSource, _fmt
from .jsonl import BLOCK, Mark, jsonl_blocks

Piece = tuple[list[int], Sequence]  # positions in increasing order, their records


def refuse_csv(paths: list[str]) -> None:
    for path in paths:
        if _fmt(path) == "csv":  # a quoted field may hold newlines: a byte offset may fall inside a row
            raise ConfigError(f"{path}: actors read JSONL and Parquet inputs; convert the CSV to Parquet "
                              "(or let the driver read)")


@dataclass
class RowReader:
    """read(positions) -> the records at those positions, in the order given. Picklable: what it learns is kept
    per process and never pickled. `sizes` (bytes, taken when made) catch a file that changed under the run."""

    paths: list[str]
    columnar: bool = False
    sizes: list[int] = field(default_factory=list)
    block_size: int = BLOCK  # bytes of JSON lines read at a time, and so the spacing of bookmarks

    def __post_init__(self) -> None:
        FileSource(self.paths)  # an unknown format: ConfigError
        refuse_csv(self.paths)
        # Opened by absolute path (an actor's working directory is not the driver's), named as given.
        self.files = [os.path.abspath(path) for path in self.paths]
        if not self.sizes:
            self.sizes = [_size(path) for path in self.files]
        if len(self.sizes) != len(self.paths):
            raise ValueError(f"{len(self.sizes)} sizes for {len(self.paths)} files")
        self._known: _Known | None = None

    @classmethod
    def for_source(cls, source: Any, columnar: bool = False) -> RowReader:
        """For a FileSource (or a KeysOnly view of one), the file sizes taken now."""
        return cls(list(source.paths), columnar)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_known": None}

    def read(self, positions: Sequence[int]) -> Sequence:
        """The records (dicts or BadRows) at `positions`, aligned with them. columnar=True: an ArrowRecords when
        the positions increase and Arrow read every row (as FileSource.blocks(columnar=True) and join give).
        InputError for a position past the end of the input or a file that changed."""
        positions = list(positions)
        if not positions:
            return []
        if self._known is None:
            self._known = _Known()
        with self._known.lock:  # one read at a time: the bookmarks and the cached row group are shared
            pieces = self._pieces(sorted(positions), self._known)
        increasing = all(a < b for a, b in pairwise(positions))
        if self.columnar and increasing and all(type(records) is ArrowRecords for _, records in pieces):
            return join([records for _, records in pieces])
        found: dict[int, Any] = {}
        for at, records in pieces:
            found.update(zip(at, records, strict=True))
        return [found[p] for p in positions]

    def _pieces(self, want: list[int], known: _Known) -> list[Piece]:
        if want[0] < 0:
            raise InputError(f"position {want[0]} is not in the input")
        pieces: list[Piece] = []
        i = 0
        for f, path in enumerate(self.paths):
            if i == len(want):
                break
            start = known.starts[f]  # known: every file before this one has been counted
            if _fmt(path) == "parquet":
                bounds = self._row_groups(f, known)
                j = bisect_left(want, start + bounds[-1], i)
                if j > i:
                    self._check(f)
                    pieces += self._parquet_rows(f, want[i:j], start, known)
                if len(known.starts) == f + 1:
                    known.starts.append(start + bounds[-1])
            else:
                ends = known.starts[f + 1] if len(known.starts) > f + 1 else None
                j = len(want) if ends is None else bisect_left(want, ends, i)
                if j > i:
                    self._check(f)
                    got = self._jsonl_rows(f, want[i:j], start, known)
                    pieces += got
                    found = sum(len(at) for at, _ in got)
                    if ends is not None and found < j - i:  # counted before, shorter now: edited, same size
                        raise InputError(f"{path} changed during the run: it no longer holds row {want[i + found]}")
                    j = i + found
            i = j
        if i < len(want):
            total = known.starts[-1] if len(known.starts) > len(self.paths) else "?"
            raise InputError(f"position {want[i]} is past the end of the input ({total} rows in "
                             f"{FileSource(self.paths).describe()})")
        return pieces

    def _jsonl_rows(self, f: int, want: list[int], start: int, known: _Known) -> list[Piece]:
        """Rows of file `f` among `want` (which may run past its end when its length is not known yet): one walk
        from a bookmark per stretch of positions that lie within a block of each other."""
        marks = known.marks.setdefault(f, _Marks(start))
        runs: list[tuple[int, list[int]]] = []  # (bookmark index, positions)
        last = -2
        for p in want:
            m = marks.index(p)
            if m > last + 1 or not runs:
                runs.append((m, []))
            runs[-1][1].append(p)
            last = m
        file, name = self.files[f], self.paths[f]

        def bad(where: str, message: str) -> BadRow:  # "/abs/data.jsonl line 3" -> "data.jsonl line 3"
            return BadRow(name + where[len(file):], message)

        pieces: list[Piece] = []
        for m, run in runs:
            new: list[Mark] = []
            blocks = jsonl_blocks(self.files[f], 0, _Positions(run).__contains__, run[-1] + 1, bad,
                                  self.block_size, self.columnar, start=marks.at(m), marks=new)
            got = 0
            try:
                while got < len(run):
                    at, _, records = next(blocks)
                    pieces.append((at, records))
                    got += len(at)
            except StopIteration as stop:  # the file's end: its length is known now
                if stop.value is not None and len(known.starts) == f + 1:
                    known.starts.append(stop.value)
            finally:
                blocks.close()
                marks.extend(new)
        return pieces

    def _row_groups(self, f: int, known: _Known) -> list[int]:
        """Where each row group of Parquet file `f` starts (in the file), and its row count last: metadata only."""
        if f not in known.groups:
            import pyarrow.parquet as pq

            self._check(f)
            with pq.ParquetFile(self.files[f]) as reader:
                meta = reader.metadata
            bounds = [0]
            for g in range(meta.num_row_groups):
                bounds.append(bounds[-1] + meta.row_group(g).num_rows)
            known.groups[f], known.metadata[f] = bounds, meta
        return known.groups[f]

    def _parquet_rows(self, f: int, want: list[int], start: int, known: _Known) -> list[Piece]:
        """Only the row groups holding `want` are read; the last one read is kept (the next batch often needs it)."""
        bounds = known.groups[f]
        pieces: list[Piece] = []
        i = 0
        while i < len(want):
            g = bisect_right(bounds, want[i] - start) - 1
            j = bisect_left(want, start + bounds[g + 1], i)
            rows = self._row_group(f, g, known).take([p - start - bounds[g] for p in want[i:j]])
            pieces.append((want[i:j], ArrowRecords(rows) if self.columnar else rows.to_pylist()))
            i = j
        return pieces

    def _row_group(self, f: int, g: int, known: _Known) -> pa.Table:
        if known.group is None or known.group[:2] != (f, g):
            import pyarrow.parquet as pq

            known.group = None  # the old one freed before the new one is read
            with pq.ParquetFile(self.files[f], metadata=known.metadata[f]) as reader:
                known.group = (f, g, reader.read_row_group(g))
        return known.group[2]

    def _check(self, f: int) -> None:
        now = _size(self.files[f])
        if now != self.sizes[f]:
            raise InputError(f"{self.paths[f]} changed during the run ({self.sizes[f]} bytes when the run began, "
                             f"{now} now): its positions may no longer name the same rows")


class _Known:
    """What one process has learned of the files."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts = [0]  # the first position of each file counted so far, and of the next one
        self.marks: dict[int, _Marks] = {}  # JSON lines file -> its bookmarks
        self.groups: dict[int, list[int]] = {}  # Parquet file -> row group bounds
        self.metadata: dict[int, Any] = {}  # Parquet file -> its footer, not parsed again
        self.group: tuple[int, int, pa.Table] | None = None  # (file, row group, rows): the last read


class _Marks:
    """Bookmarks (offset, position, line number) of one JSON lines file, by position: 24 bytes each, one per
    block (256 KB) passed. Walks start at a bookmark, so the marked part is one stretch from the file's start;
    only marks past its end are new."""

    def __init__(self, start: int):
        self.offsets, self.positions, self.lines = array("q", [0]), array("q", [start]), array("q", [0])

    def index(self, pos: int) -> int:
        """The last bookmark at or before `pos`."""
        return bisect_right(self.positions, pos) - 1

    def at(self, i: int) -> Mark:
        return self.offsets[i], self.positions[i], self.lines[i]

    def extend(self, marks: list[Mark]) -> None:
        for offset, pos, line in marks:
            if pos > self.positions[-1]:
                self.offsets.append(offset)
                self.positions.append(pos)
                self.lines.append(line)


class _Positions(set):
    """Wanted positions; `lo` (the first) lets the JSON lines reader count whole blocks before it without parsing
    them (first_wanted reads it through the bound `__contains__`, a C call per position)."""

    def __init__(self, positions: list[int]):
        super().__init__(positions)
        self.lo = positions[0]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the input file ({exc.strerror})") from None
