"""Before a run: check the job against the ledger (fingerprint, orphans), check the input's keys, and work out
which source positions are left to do."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import job, shards
from .errors import ChangedJobError, ConfigError, InputError
from .intervals import From, Intervals
from .ledger import Ledger, RunDir
from .settings import JobSettings
from .sources import BadRow, IterableSource, Source


@dataclass
class Plan:
    lo: int
    hi: int | None  # exclusive; None = to the end of the source
    total: int | None  # items in [lo, hi)
    done: Intervals
    failed: set[int]
    skip_dupes: set[int] = field(default_factory=set)
    check_keys_in_stream: bool = False
    skip_keys: set | None = None  # after an allowed input change: done items are known by key, not position
    already_done: int = 0
    already_failed: int = 0
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.done) and not self.failed and not self.skip_dupes:
            self.wanted = From(self.lo)  # a fresh run: a block's positions made in C, not a call per row

    def wanted(self, pos: int) -> bool:
        return pos >= self.lo and pos not in self.done and pos not in self.failed and pos not in self.skip_dupes

    @property
    def nothing_to_do(self) -> bool:
        return self.total is not None and self.already_done + self.already_failed >= self.total


def check_fingerprint(ledger: Ledger, current: dict, allow_changed: bool) -> list[str]:
    """Store the fingerprint on a first run; on a resume refuse a different job, with a readable diff."""
    stored = ledger.get_meta("fingerprint")
    if stored is None:
        ledger.set_meta(fingerprint=current)
        return []
    lines = job.diff(stored, current)
    if not lines:
        return []
    if ledger.count_done() == 0 and not ledger.failures():
        ledger.set_meta(fingerprint=current, checked={})  # nothing committed yet: nothing to mix up
        return []
    if not allow_changed:
        raise ChangedJobError(
            f"{ledger.path.parent}: this run directory holds a different job; refusing to mix results.\n  "
            + "\n  ".join(lines)
            + "\nUse a new --run-dir, restore the original, or pass --allow-changed to resume anyway.", lines)
    if stored.get("source") != current.get("source"):
        # Positions no longer mean the same items: from now on, done items are recognised by key.
        ledger.set_meta(match_by_key=True)
    ledger.set_meta(fingerprint=current)
    return [f"resuming although the job changed (--allow-changed): {'; '.join(lines)}"]


def make_plan(ledger: Ledger, run_dir: RunDir, source: Source, settings: JobSettings) -> Plan:
    messages = []
    removed = shards.remove_orphans(run_dir, ledger.shard_names())
    if removed:
        messages.append(f"removed {len(removed)} uncommitted shard file(s) left by an interrupted run")
    source_id = hashlib.blake2b(json.dumps(source.identity(), sort_keys=True).encode(), digest_size=12).hexdigest()
    checked = ledger.get_meta("checked") or {}
    skip_dupes: set[int] = set()
    in_stream = settings.key is None
    if checked.get("source") == source_id and checked.get("key") == settings.key:
        count = checked.get("count")
        skip_dupes = set(checked.get("duplicates", []))
        in_stream = checked.get("in_stream", in_stream)
    else:
        count, skip_dupes, in_stream = _check_keys(source, settings)
        if count is not None:
            ledger.set_meta(checked={"source": source_id, "key": settings.key, "count": count,
                                     "duplicates": sorted(skip_dupes), "in_stream": in_stream})
    if count == 0:
        raise InputError(f"{source.describe()}: the input has no items")
    lo = settings.start or 0
    hi = settings.end
    if settings.limit is not None:
        hi = lo + settings.limit if hi is None else min(hi, lo + settings.limit)
    if count is not None:
        hi = count if hi is None else min(hi, count)
    total = None if hi is None else max(0, hi - lo) - sum(lo <= p < hi for p in skip_dupes)
    done = Intervals(ledger.done_spans())
    failed = ledger.failed_positions()
    skip_keys = None
    if ledger.get_meta("match_by_key"):
        skip_keys = shards.done_keys(run_dir, ledger, settings.key or "_key")
        skip_keys.update(f["key"] for f in ledger.failures() if f["state"] != "pending")
        done, failed = Intervals(), set()
    in_range = (lambda p: lo <= p < hi) if hi is not None else (lambda p: lo <= p)
    already_done = (done.count_below(hi) if hi is not None else len(done)) - done.count_below(lo)
    already_failed = sum(1 for p in failed if in_range(p))
    plan = Plan(lo=lo, hi=hi, total=total, done=done, failed=failed, skip_dupes=skip_dupes,
                check_keys_in_stream=in_stream, already_done=already_done, already_failed=already_failed,
                messages=messages)
    if skip_keys is not None:
        plan.skip_keys = skip_keys
        plan.already_done, plan.already_failed = ledger.count_done(), 0
        plan.total = None  # unknown until the changed input has been read through
    return plan


def _check_keys(source: Source, settings: JobSettings) -> tuple[int | None, set[int], bool]:
    """Count the items and check key uniqueness in one Arrow pass where possible: (count, duplicate positions to
    skip, whether the stream must check keys itself)."""
    if settings.key is None:
        return source.count(), set(), True
    count = _strictly_increasing(source, settings.key)
    pa.default_memory_pool().release_unused()  # give the pass's memory back before the long run
    if count is not None:
        return count, set(), False  # sorted keys are distinct: checked in one streaming pass, no memory
    keys = source.key_column(settings.key)
    if keys is None:
        _check_key_exists(source, settings.key)
        return source.count(), set(), True
    count = len(keys)
    if count and keys.null_count == count:  # a misspelt --key: a configuration error, not count bad rows
        raise ConfigError(f"{source.describe()}: no row has a value for the key column '{settings.key}'"
                          f"{_columns_hint(source)}. Check --key.")
    unique = all_distinct(keys)
    del keys
    pa.default_memory_pool().release_unused()  # give the pass's memory back before the long run
    if unique:
        return count, set(), False
    return count, find_duplicates(source, settings.key, settings.dedupe, settings.skip_bad_rows), False


def _strictly_increasing(source: Source, key: str) -> int | None:
    """The key count when keys only ever increase (ids in order: the common case), else None."""
    batches = getattr(source, "key_batches", None)
    if batches is None:
        return None
    count, last = 0, None
    try:
        for chunk in batches(key):
            if chunk.null_count or (last is not None and (chunk.type != last.type or len(chunk) and
                                                          not pc.greater(chunk[0], last).as_py())):
                return None
            if len(chunk) > 1 and not pc.all(pc.greater(chunk[1:], chunk[:-1])).as_py():
                return None
            if len(chunk):
                last = chunk[-1]
            count += len(chunk)
    except Exception:  # noqa: BLE001 - unreadable by Arrow: the slower checks decide
        return None
    return count


PARTITION = 1 << 18  # keys sorted at a time: bounds the check's memory whatever the input size


def all_distinct(keys: pa.ChunkedArray) -> bool:
    """True when no key repeats. Sorting beats Arrow's hash kernels by far in memory (count_distinct of 3M
    int64 keys takes ~300 MB, a sort ~24 bytes a key); integer keys are also split by their low bits into
    partitions of about PARTITION keys, so memory stays flat from 1M to 3M items."""
    if keys.null_count:
        return False
    if not pa.types.is_integer(keys.type) or len(keys) <= PARTITION:
        return _sorted_distinct(keys.combine_chunks())
    parts = 1 << (len(keys) // PARTITION).bit_length()
    low_bits = pc.bit_wise_and(keys, parts - 1)
    return all(_sorted_distinct(pc.filter(keys, pc.equal(low_bits, part)).combine_chunks()) for part in range(parts))


def _sorted_distinct(values: pa.Array) -> bool:
    if len(values) < 2:
        return True
    ordered = values.take(pc.sort_indices(values))
    return not pc.any(pc.equal(ordered[1:], ordered[:-1])).as_py()


def find_duplicates(source: Source, key: str, dedupe: bool, skip_bad_rows: bool = False) -> set[int]:
    """The slow, exact pass, taken only when duplicates (or missing keys) exist: name the rows, or with dedupe
    return the positions of every later occurrence. A row without its key is an error here, before anything
    runs, unless bad rows are skipped: then the run records it as a failure at its position."""
    seen: dict[Any, str] = {}
    later: set[int] = set()
    for pos, line, record in source.rows(lambda p: True, None):
        if type(record) is BadRow:
            continue  # reported, with its line, by the run itself
        where = source.where(line)
        value = record.get(key)
        if value is None:
            if skip_bad_rows:
                continue
            raise InputError(f"{where}: {missing_key(record, key)}. Fix the row, or pass --skip-bad-rows to record "
                             "it as a failure.")
        first = seen.setdefault(value, where)
        if first is not where:
            if not dedupe:
                raise InputError(f"duplicate key {key}={value!r}: {first} and {where}. Keys must be unique; "
                                 "pass --dedupe to keep the first occurrence.")
            later.add(pos)
    return later


def missing_key(record: dict, key: str) -> str:
    if key in record:
        return f"key column '{key}' is null"
    return f"no key column '{key}' in this row (columns: {', '.join(map(str, record)) or 'none'})"


def _check_key_exists(source: Source, key: str, sample: int = 1000) -> None:
    """When keys are checked row by row, a misspelt --key would otherwise surface as every row failing.
    (Not for Python iterables: a generator read here would be used up.)"""
    if isinstance(source, IterableSource):
        return
    columns: dict[str, None] = {}
    for n, (_, _, record) in enumerate(source.rows(lambda p: True, None)):
        if n >= sample:
            break
        if type(record) is not BadRow:
            if key in record:
                return
            columns.update(dict.fromkeys(map(str, record)))
    if columns:
        raise ConfigError(f"{source.describe()}: none of the first {min(n + 1, sample):,} rows has the key column "
                          f"'{key}' (columns: {', '.join(columns)}). Check --key.")


def _columns_hint(source: Source) -> str:
    """' (columns: a, b)' from the first readable row, to show what --key could be."""
    for _, _, record in source.rows(lambda p: True, None):
        if type(record) is not BadRow:
            return f" (columns: {', '.join(map(str, record)) or 'none'})"
    return ""
