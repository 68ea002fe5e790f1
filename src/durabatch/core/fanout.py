"""One input, many work items: a document split into segments that run in parallel (under the same rate
limits as everything else), grouped back into one result per document. A document is committed only when all
its segments are done, so the ledger's unit stays the input item: a kill redoes the segments of unfinished
documents, never a document twice. A segment that fails for good fails its document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ItemError
from ..store.ledger import Failure

Split = Callable[[dict], list]
Combine = Callable[[dict, list], Any]


def default_combine(record: dict, outputs: list) -> dict:
    return {"segments": outputs}


@dataclass
class _Document:
    key: Any
    record: dict
    outputs: list
    remaining: int


@dataclass
class FanIn:
    split_fn: Split
    combine_fn: Combine = default_combine
    ready: list[tuple[int, Any, Any]] = field(default_factory=list)  # (position, key, combined output)
    failed: list[Failure] = field(default_factory=list)
    _docs: dict[int, _Document] = field(default_factory=dict)
    # id(segment) -> (position, index, segment). Each segment is a fresh object made here and held until its
    # result comes back, so that no two live segments share an id, even when split() returns one object twice.
    _segment: dict[int, tuple[int, int, dict]] = field(default_factory=dict)

    def split(self, pos: int, key: Any, record: dict) -> list[dict]:
        """The document's segments, registered so that their results find their way back."""
        try:
            parts = [dict(p) if isinstance(p, dict) else {"value": p} for p in self.split_fn(record)]
        except Exception as exc:  # noqa: BLE001 - a document that cannot be split fails alone
            self._fail(pos, key, ItemError.from_exception(exc), "split")
            return []
        self._docs[pos] = _Document(key, record, [None] * len(parts), len(parts))
        for i, part in enumerate(parts):
            self._segment[id(part)] = (pos, i, part)
        if not parts:
            self._finish(pos)
        return parts

    def done(self, segment: dict, output: Any) -> None:
        pos, index = self._take(segment)
        doc = self._docs.get(pos) if pos is not None else None
        if doc is None:
            return  # its document already failed
        doc.outputs[index] = output
        doc.remaining -= 1
        if doc.remaining == 0:
            self._finish(pos)

    def fail(self, segment: dict, failure: Failure) -> None:
        pos, index = self._take(segment)
        if pos is not None and pos in self._docs:
            doc = self._close(pos)
            self.failed.append(Failure(pos, doc.key, failure.error_type, f"segment {index}: {failure.message}",
                                       failure.traceback, failure.attempts))

    def close_open(self, message: str) -> None:
        """Fail every open document: called when no segment can come back any more (nothing in flight, nothing
        queued), so that a run never ends as finished with a document neither committed nor failed."""
        for pos in list(self._docs):
            doc = self._close(pos)
            self.failed.append(Failure(pos, doc.key, "SegmentsLost", f"{message} ({doc.remaining} of "
                                       f"{len(doc.outputs)} segment(s) never came back)", "", 1))

    def _take(self, segment: dict) -> tuple[int | None, int | None]:
        entry = self._segment.get(id(segment))
        if entry is None or entry[2] is not segment:
            return None, None
        del self._segment[id(segment)]
        return entry[0], entry[1]

    def _close(self, pos: int) -> _Document:
        doc = self._docs.pop(pos)
        for part_id in [k for k, v in self._segment.items() if v[0] == pos]:
            del self._segment[part_id]
        return doc

    def _finish(self, pos: int) -> None:
        doc = self._docs.pop(pos)
        try:
            self.ready.append((pos, doc.key, self.combine_fn(doc.record, doc.outputs)))
        except Exception as exc:  # noqa: BLE001
            self._fail(pos, doc.key, ItemError.from_exception(exc), "combine")

    def _fail(self, pos: int, key: Any, error: ItemError, stage: str) -> None:
        self.failed.append(Failure(pos, key, error.error_type, f"{stage}: {error.message}", error.traceback, 1))

    def take_finished(self) -> tuple[list[tuple[int, Any, Any]], list[Failure]]:
        """Documents completed (position, key, combined output) and failed since the last call."""
        ready, failed = self.ready, self.failed
        self.ready, self.failed = [], []
        return ready, failed

    @property
    def open_documents(self) -> int:
        return len(self._docs)
