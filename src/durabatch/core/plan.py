"""Before a run: check the job against the ledger (fingerprint, orphans), check the input's keys, and work out
which source positions are left to do."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChangedJobError, InputError, option
from ..intervals import From, Intervals
from ..sources import Source
from ..sources.keys import check_keys
from ..sources.ranged import RangeView
from ..store import orphans, shards
from ..store.ledger import Ledger
from ..store.rundir import RunDir
from .spec import Keys, Selection


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


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines like `fn_code: 1a2b... -> 3c4d...`, one per differing leaf of two fingerprints."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{name}: {old.get(name, '(absent)')!r} -> {new.get(name, '(absent)')!r}"
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


# Fingerprint fields added after run directories already existed: one stored without them cannot tell, so the
# field is not held against a job resumed across the upgrade.
ADDED_LATER = (("settings", "call"),)


def check_fingerprint(ledger: Ledger, current: dict, allow_changed: bool) -> list[str]:
    """Store the fingerprint on a first run; on a resume refuse a different job, with a readable diff."""
    stored = ledger.get_meta("fingerprint")
    if stored is None:
        ledger.set_meta(fingerprint=current)
        return []
    lines = diff(_with_later_fields(stored, current), current)
    if not lines:
        return []
    if ledger.count_done() == 0 and not ledger.failures():
        ledger.set_meta(fingerprint=current, checked={})  # nothing committed yet: nothing to mix up
        return []
    if not allow_changed:
        raise ChangedJobError(
            f"{ledger.path.parent}: this run directory holds a different job; refusing to mix results.\n  "
            + "\n  ".join(lines)
            + f"\nUse a new run directory ({option('run_dir', 'NEW_DIR')}, or {option('fresh')} to move this one "
            f"aside), restore the original, or pass {option('allow_changed')} to resume anyway.", lines)
    if stored.get("source") != current.get("source"):
        # Positions no longer mean the same items: from now on, done items are recognised by key.
        ledger.set_meta(match_by_key=True)
    ledger.set_meta(fingerprint=current)
    return [f"resuming although the job changed ({option('allow_changed')}): {'; '.join(lines)}"]


def _with_later_fields(stored: dict, current: dict) -> dict:
    merged = {**stored}
    for section, name in ADDED_LATER:
        old, new = merged.get(section), current.get(section)
        if isinstance(old, dict) and isinstance(new, dict) and name not in old and name in new:
            merged[section] = {**old, name: new[name]}
    return merged


def _check_keys(source: Source, keys: Keys, selection: Selection) -> tuple[int | None, set[int], bool]:
    """The key check over the whole input, or over a rank's own range only (count: where the range ends)."""
    if not selection.ranked or selection.end is None:
        return check_keys(source, keys.column, keys.dedupe, keys.skip_bad_rows)
    view = RangeView(source, selection.start, selection.end)
    count, skip_dupes, in_stream = check_keys(view, keys.column, keys.dedupe, keys.skip_bad_rows)
    return (None if count is None else selection.start + count), skip_dupes, in_stream


def make_plan(ledger: Ledger, run_dir: RunDir, source: Source, keys: Keys, selection: Selection) -> Plan:
    messages = []
    settled = orphans.settle(run_dir, ledger)
    if settled.adopted:
        messages.append(f"kept {len(settled.adopted)} complete shard file(s) of this job whose ledger commit was lost")
    if settled.removed:
        messages.append(f"removed {len(settled.removed)} uncommitted shard file(s) left by an interrupted run")
    source_id = hashlib.blake2b(json.dumps(source.identity(), sort_keys=True).encode(), digest_size=12).hexdigest()
    checked = ledger.get_meta("checked") or {}
    skip_dupes: set[int] = set()
    in_stream = keys.column is None
    if checked.get("source") == source_id and checked.get("key") == keys.column:
        count = checked.get("count")
        skip_dupes = set(checked.get("duplicates", []))
        in_stream = checked.get("in_stream", in_stream)
    else:
        count, skip_dupes, in_stream = _check_keys(source, keys, selection)
        if count is not None:
            ledger.set_meta(checked={"source": source_id, "key": keys.column, "count": count,
                                     "duplicates": sorted(skip_dupes), "in_stream": in_stream})
    if count == 0 and not selection.ranked:  # a rank's share may be empty (more ranks than items)
        raise InputError(f"{source.describe()}: the input has no items")
    lo = selection.start or 0
    hi = selection.end
    if selection.limit is not None:
        hi = lo + selection.limit if hi is None else min(hi, lo + selection.limit)
    if count is not None:
        hi = count if hi is None else min(hi, count)
    total = None if hi is None else max(0, hi - lo) - sum(lo <= p < hi for p in skip_dupes)
    done = Intervals(ledger.done_spans())
    failed = ledger.failed_positions()
    skip_keys = None
    if ledger.get_meta("match_by_key"):
        skip_keys = shards.done_keys(run_dir, ledger, keys.output_column)
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
