"""What a source is: the protocol the core reads through, the block it yields, and a row it could not read.

A source yields *blocks*: (positions, where-handles, records) in source order, so the core cuts batches as list
slices and per-row Python runs only where rows differ. Positions are stable while the input does not change,
which the job's fingerprint checks through `identity()`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

Block = tuple[list[int], list[Any], list[Any]]  # positions, where-handles (line numbers...), records or BadRows
Wanted = Callable[[int], bool]


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be read; `where` names the file and line."""

    where: str
    message: str


class Source(Protocol):
    def describe(self) -> str:
        """A short human name (file names, 'python iterable')."""

    def identity(self) -> dict:
        """What the fingerprint keeps: names, sizes and a sampled content hash. Changes when the input does."""

    def count(self) -> int | None:
        """Rows in the source, or None when it cannot know without consuming it."""

    def key_batches(self, key: str) -> Iterator[pa.Array] | None:
        """The key column in order, a batch at a time (a streaming check), or None where Arrow cannot stream it."""

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        """The key column read by Arrow (for the uniqueness check), or None where Arrow cannot read it."""

    def where(self, line: Any) -> str:
        """'data.jsonl line 12' for a where-handle of a block."""

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        """Blocks of the wanted positions before `end`, in order. columnar=True may yield ArrowRecords."""

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        """(position, where-handle, record or BadRow), one at a time: the slow, exact path."""
