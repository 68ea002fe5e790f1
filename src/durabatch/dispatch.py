"""What to run next: the keyed stream of records still to do, cut into batches, with due retries first and
suspects of a crash sent alone."""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from .engines import Batch
from .errors import InputError
from .fanout import FanIn
from .plan import Plan, missing_key
from .settings import JobSettings
from .sources import BadRow, Source

BadRowHook = Callable[[int, str, str], None]  # (position, where, message): raise, or record a failure


class Dispatch:
    def __init__(self, source: Source, plan: Plan, settings: JobSettings, suspects: set[int],
                 on_bad_row: BadRowHook, fanin: FanIn | None = None, clock: Callable[[], float] = time.monotonic):
        self.fanin = fanin
        self.source, self.plan, self.settings = source, plan, settings
        self.suspects = suspects
        self.on_bad_row = on_bad_row
        self.clock = clock
        self.key_column = settings.key or "_key"
        self.chunk = 1 if settings.batch_size is None else settings.batch_size
        # Items to run again: (ready_at, attempt, solo, pos, key, record).
        self._retries: list[tuple[float, int, bool, int, Any, dict]] = []
        self._held: tuple[int, Any, dict] | None = None  # a suspect waiting for the engine to be idle
        self._items = self._stream()
        self._ids = 0
        self._error: InputError | None = None
        self.source_done = False

    @property
    def finished(self) -> bool:
        return self.source_done and not self._retries and self._held is None

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
            _, attempt, solo, *_ = self._retries[0]
            if solo and not idle:
                return None
            picked = [heapq.heappop(self._retries)]
            while not solo and self._retries and len(picked) < self.chunk and self._retries[0][0] <= now \
                    and self._retries[0][1] == attempt and not self._retries[0][2]:
                picked.append(heapq.heappop(self._retries))
            return self._batch([p[3:] for p in picked], attempt, solo)
        if self._held is not None:
            if not idle:
                return None
            held, self._held = self._held, None
            return self._batch([held], 1, True)
        if self._error is not None:
            raise self._error
        if self.source_done:
            return None
        picked_items: list[tuple[int, Any, dict]] = []
        try:
            if not self.suspects:
                picked_items.extend(islice(self._items, self.chunk))  # in C; keeps what came before an error
                self.source_done = len(picked_items) < self.chunk
            else:
                for item in self._items:
                    if item[0] in self.suspects:
                        self._held = item
                        break
                    picked_items.append(item)
                    if len(picked_items) >= self.chunk:
                        break
                else:
                    self.source_done = True
        except InputError as exc:  # a bad row: the records before it still run, then the error stops the run
            if not picked_items:
                raise
            self._error = exc
        if picked_items:
            return self._batch(picked_items, 1, False)
        return self.next_batch(idle) if self._held is not None and idle else None

    def _batch(self, items: list[tuple[int, Any, dict]], attempt: int, solo: bool) -> Batch:
        self._ids += 1
        return Batch(self._ids, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], attempt, solo)

    def observe(self, seconds: float, items: int) -> None:
        """Per-record functions go out in chunks of about 20 ms of work: cheap functions amortise dispatch, slow
        ones keep every worker busy to the end. Never more than one commit's worth."""
        if self.settings.batch_size is None and items and not self.settings.at_most_once:  # there: one call each
            per_item = seconds / items
            target = int(0.02 / per_item) if per_item > 0 else 1000
            self.chunk = max(1, min(1000, self.settings.commit_every, target))

    def _stream(self) -> Iterator[tuple[int, Any, dict]]:
        """Keyed records to do, in source order. Bad rows go to the hook, which raises or records them."""
        plan, key, src, dedupe = self.plan, self.settings.key, self.source, self.settings.dedupe
        seen: dict[Any, str] | None = {} if plan.check_keys_in_stream else None
        skip_keys = plan.skip_keys
        for pos, line, record in src.rows(plan.wanted, plan.hi):
            if type(record) is BadRow:
                self.on_bad_row(pos, record.where, record.message)
                continue
            if key is None:
                value = hashlib.blake2b(json.dumps(record, sort_keys=True, default=str).encode(),
                                        digest_size=8).hexdigest()
            else:
                value = record.get(key)
                if value is None:
                    self.on_bad_row(pos, src.where(line), missing_key(record, key))
                    continue
            if skip_keys is not None and str(value) in skip_keys:
                continue
            if seen is not None:
                if value in seen:
                    if dedupe:
                        continue
                    raise InputError(f"duplicate key {self.key_column}={value!r}: {seen[value]} and "
                                     f"{src.where(line)}. Pass --dedupe to keep the first occurrence.")
                seen[value] = src.where(line)
            if self.fanin is not None:
                for segment in self.fanin.split(pos, value, record):
                    yield pos, value, segment
                continue
            yield pos, value, record
