"""What to run next: the keyed stream of records still to do, cut into batches, with due retries first and
suspects of a crash sent in groups with nothing else in flight (a group of one: alone)."""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from ..columns import ArrowRecords, join
from ..engines import Batch
from ..errors import InputError, option
from ..sources import BadRow, Block, Source
from ..sources.keys import KeyKinds, bad_key, missing_key
from .fanout import FanIn
from .plan import Plan
from .spec import Batching, Keys

BadRowHook = Callable[[int, str, str], None]  # (position, where, message): raise, or record a failure
BATCH_SECONDS = 0.02  # work per batch of a per-record function, unless the engine asks for more


class Dispatch:
    def __init__(self, source: Source, plan: Plan, keys: Keys, batching: Batching, max_chunk: int,
                 suspects: set[int], on_bad_row: BadRowHook, fanin: FanIn | None = None,
                 clock: Callable[[], float] = time.monotonic, caps: dict[int, int] | None = None,
                 batch_seconds: float = BATCH_SECONDS, pins_deaths: bool = False):
        self.fanin = fanin
        self.batch_seconds = batch_seconds  # the engine's wish: ~20 ms locally, longer for remote calls (Ray)
        self.pins_deaths = pins_deaths  # the engine names the batch a worker died under: solos need no idle engine
        self.source, self.plan, self.keys, self.batching = source, plan, keys, batching
        self.max_chunk = max_chunk  # never more than one commit's worth in a batch
        self.suspects = suspects
        self.caps = caps or {}  # suspect -> the largest group it may run in (1 once a group of it died)
        self._unmet = len(suspects)  # suspects not yet met in the stream
        self._met: set[int] = set()
        self.on_bad_row = on_bad_row
        self.clock = clock
        self.chunk = 1 if batching.size is None else batching.size
        # Items to run again: (ready_at, attempt, solo, pos, key, record).
        self._retries: list[tuple[float, int, bool, int, Any, dict]] = []
        self._group: list[tuple[int, Any, dict]] = []  # suspects met in the stream, gathering into a group
        self._group_cap = 0
        self._groups: deque[list[tuple[int, Any, dict]]] = deque()  # closed groups waiting for an idle engine
        self._seen: dict[Any, str] | None = {} if plan.check_keys_in_stream else None
        self._kinds = KeyKinds(keys.output_column)  # keys of two types are refused, naming both rows
        self._blocks = self._stream()
        self._block: Block = ([], [], [])  # the stream's current block, taken from `_offset` on
        self._offset = 0
        self._ids = 0
        self._error: InputError | None = None
        self.source_done = False

    @property
    def finished(self) -> bool:
        fanin = self.fanin
        return self.source_done and not self._retries and not self._groups and not self._group and \
            (fanin is None or not (fanin.open_documents or fanin.ready or fanin.failed))

    def next_retry_in(self) -> float | None:
        return max(0.0, self._retries[0][0] - self.clock()) if self._retries else None

    def retry_later(self, pos: int, key: Any, record: dict, attempt: int, delay: float) -> None:
        heapq.heappush(self._retries, (self.clock() + delay, attempt, False, pos, key, record))

    def run_alone(self, pos: int, key: Any, record: dict, attempt: int) -> None:
        heapq.heappush(self._retries, (self.clock(), attempt, True, pos, key, record))

    def next_batch(self, idle: bool) -> Batch | None:
        """The next batch to submit, or None when nothing can go now. A solo batch is only handed out when the
        engine is idle (`idle`), so that a death during it can be pinned on its one item."""
        now = self.clock()
        if self._retries and self._retries[0][0] <= now:
            return self._due_retries(now, idle)
        if self._groups:
            if not idle:
                return None
            return self._batch(self._groups.popleft(), 1, True)
        if self._error is not None:
            raise self._error
        if self.source_done:
            self._close_lost_documents(idle)
            return None
        positions: list[int] = []
        keys: list[Any] = []
        pieces: list[Sequence[dict]] = []  # slices of blocks' records (lists, or ArrowRecords in columns mode)
        try:
            while len(positions) < self.chunk:  # slices of the stream's blocks: no per-item work here
                if self._offset >= len(self._block[0]):
                    self._block, self._offset = next(self._blocks), 0
                o, take = self._offset, self.chunk - len(positions)
                block_positions, block_keys, block_records = self._block
                cut = block_positions[o:o + take]
                if self.suspects and not self.suspects.isdisjoint(cut):
                    at = next(i for i, p in enumerate(cut) if p in self.suspects)
                    positions += cut[:at]
                    keys += block_keys[o:o + at]
                    pieces.append(block_records[o:o + at])
                    self._meet(cut[at], block_keys[o + at], block_records[o + at])
                    self._offset = o + at + 1
                    if self._groups:
                        break
                    continue
                positions += cut
                keys += block_keys[o:o + take]
                pieces.append(block_records[o:o + take])
                self._offset = o + len(cut)
        except StopIteration:
            self.source_done = True
            self._close_group()
        except InputError as exc:  # a bad row: the records before it still run, then the error stops the run
            if not positions:
                raise
            self._error = exc
        if positions:
            return self._new_batch(positions, keys, join([p for p in pieces if len(p)]), 1, False)
        return self.next_batch(idle) if self._groups and idle else None

    def _meet(self, pos: int, key: Any, record: dict) -> None:
        """A suspect met in the stream joins the open group of suspects with its cap; a full group closes and
        waits for an idle engine. The last suspect met closes the open group."""
        cap = self.caps.get(pos, self.max_chunk)
        if self._group and cap != self._group_cap:
            self._close_group()
        self._group.append((pos, key, record))
        self._group_cap = cap
        if pos not in self._met:  # fan-out segments share their document's position
            self._met.add(pos)
            self._unmet -= 1
        if len(self._group) >= cap or not self._unmet:
            self._close_group()

    def _close_group(self) -> None:
        if self._group:
            self._groups.append(self._group)
            self._group = []

    def _due_retries(self, now: float, idle: bool) -> Batch | None:
        """Due retries of one attempt number together; a suspect alone, and only on an idle engine."""
        _, attempt, solo, *_ = self._retries[0]
        if solo and not idle and not self.pins_deaths:
            return None
        picked = [heapq.heappop(self._retries)]
        while not solo and self._retries and len(picked) < self.chunk and self._retries[0][0] <= now \
                and self._retries[0][1] == attempt and not self._retries[0][2]:
            picked.append(heapq.heappop(self._retries))
        return self._batch([p[3:] for p in picked], attempt, solo)

    def _close_lost_documents(self, idle: bool) -> None:
        """Nothing in flight or queued: no segment can come back, so an open document is failed (and committed
        as such), never left out of a run that then says it finished."""
        if idle and not self._retries and self.fanin is not None and self.fanin.open_documents:
            self.fanin.close_open("the document's segments were lost")

    def _batch(self, items: list[tuple[int, Any, dict]], attempt: int, solo: bool) -> Batch:
        return self._new_batch([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], attempt, solo)

    def _new_batch(self, positions: list[int], keys: list, records: list, attempt: int, solo: bool) -> Batch:
        self._ids += 1
        return Batch(self._ids, positions, keys, records, attempt, solo)

    def observe(self, seconds: float, items: int) -> None:
        """Per-record functions go out in chunks of about `batch_seconds` of work (20 ms locally): cheap functions
        amortise dispatch, slow ones keep every worker busy to the end. Never more than one commit's worth."""
        if self.batching.size is None and items and self.batching.adaptive:
            most = int(1000 * max(1.0, self.batch_seconds / BATCH_SECONDS))
            per_item = seconds / items
            target = int(self.batch_seconds / per_item) if per_item > 0 else most
            self.chunk = max(1, min(most, self.max_chunk, target))

    def _stream(self) -> Iterator[Block]:
        """Blocks of keyed records to do, in source order. Bad rows go to the hook, which raises or records them."""
        key = self.keys.column
        simple = key is not None and not self.plan.check_keys_in_stream and self.plan.skip_keys is None \
            and self.fanin is None
        columnar = self.batching.columns
        for positions, lines, records in self.source.blocks(self.plan.wanted, self.plan.hi, columnar=columnar):
            if simple:  # the common case: keys checked before the run, every row a record with its key
                try:
                    # In C (Arrow, or itemgetter); a bad row or a missing key raises.
                    keys = records.column(key) if type(records) is ArrowRecords else \
                        list(map(itemgetter(key), records))
                except (KeyError, TypeError):
                    keys = [None]
                if None not in keys:
                    yield positions, keys, records
                    continue
            yield from self._one_by_one(positions, lines, records)

    def _one_by_one(self, positions: list[int], lines: list, records: list) -> Iterator[Block]:
        plan, key, src, dedupe = self.plan, self.keys.column, self.source, self.keys.dedupe
        seen, kinds = self._seen, self._kinds
        out: Block = ([], [], [])
        try:
            for pos, line, record in zip(positions, lines, records, strict=True):
                if type(record) is BadRow:
                    self.on_bad_row(pos, record.where, record.message)
                    continue
                if key is None:
                    value = content_key(record)
                    if value is None:
                        self.on_bad_row(pos, src.where(line), "cannot hash this record for its key (nested too "
                                        "deeply, or holding a value with no JSON form)")
                        continue
                else:
                    value = record.get(key)
                    problem = missing_key(record, key) if value is None else bad_key(value, key)
                    if problem is not None:
                        self.on_bad_row(pos, src.where(line), problem)
                        continue
                    kinds.check(value, src.where(line))
                if plan.skip_keys is not None and str(value) in plan.skip_keys:
                    continue
                if seen is not None:
                    if value in seen:
                        if dedupe:
                            continue
                        raise InputError(f"duplicate key {self.keys.output_column}={value!r}: {seen[value]} and "
                                         f"{src.where(line)}. Pass {option('dedupe')} to keep the first occurrence.")
                    seen[value] = src.where(line)
                for segment in self.fanin.split(pos, value, record) if self.fanin is not None else (record,):
                    out[0].append(pos)
                    out[1].append(value)
                    out[2].append(segment)
        except InputError:
            if out[0]:
                yield out  # the rows before a bad one still run
            raise
        if out[0]:
            yield out


def content_key(record: dict) -> str | None:
    """A record's content hash (its key when no key column is named), or None when it has no JSON form."""
    try:
        text = json.dumps(record, sort_keys=True, default=str)
    except (RecursionError, ValueError, TypeError):  # nested too deeply, circular, keys of mixed types
        return None
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
