"""Key checks before a run: count the items and prove the key column unique in Arrow (C speed, a few bytes per
key, freed afterwards), and only when duplicates or missing keys exist, name the rows in a slow exact pass."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, InputError, option
from .base import BadRow, Source
from .files import IterableSource


def check_keys(source: Source, key: str | None, dedupe: bool = False, skip_bad_rows: bool = False
               ) -> tuple[int | None, set[int], bool]:
    """Count the items and check key uniqueness in one Arrow pass where possible: (count, duplicate positions to
    skip, whether the stream must check keys itself)."""
    if key is None:
        return source.count(), set(), True
    count = _strictly_increasing(source, key)
    pa.default_memory_pool().release_unused()  # give the pass's memory back before the long run
    if count is not None:
        return count, set(), False  # sorted keys are distinct: checked in one streaming pass, no memory
    keys = source.key_column(key)
    if keys is None:  # Arrow cannot read the keys (mixed types, a bad line, nested values...)
        _check_key_exists(source, key)
        if isinstance(source, IterableSource):
            return source.count(), set(), True  # read once only: keys are checked as the stream goes
        later, bad_keys = exact_pass(source, key, dedupe, skip_bad_rows)
        return source.count(), later, bad_keys
    count = len(keys)
    if count and keys.null_count == count:  # a misspelt --key: a configuration error, not count bad rows
        raise ConfigError(f"{source.describe()}: no row has a value for the key column '{key}'"
                          f"{_columns_hint(source)}. Check {option('key', None)}.")
    if not (pa.types.is_integer(keys.type) or pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)
            or pa.types.is_floating(keys.type)):  # lists, structs...: the exact pass names the rows
        del keys
        later, bad_keys = exact_pass(source, key, dedupe, skip_bad_rows)
        return count, later, bad_keys
    unique = all_distinct(keys)
    del keys
    pa.default_memory_pool().release_unused()  # give the pass's memory back before the long run
    if unique:
        return count, set(), False
    return count, find_duplicates(source, key, dedupe, skip_bad_rows), False


def _strictly_increasing(source: Source, key: str) -> int | None:
    """The key count when keys only ever increase (ids in order: the common case), else None."""
    batches = source.key_batches(key)
    if batches is None:
        return None
    count, last = 0, None
    try:
        for chunk in batches:
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
    return exact_pass(source, key, dedupe, skip_bad_rows)[0]


def exact_pass(source: Source, key: str, dedupe: bool, skip_bad_rows: bool = False) -> tuple[set[int], bool]:
    """The slow, exact pass, taken only when Arrow cannot prove the keys unique and of one type: name the rows,
    or with dedupe return the positions of every later occurrence. A row without a usable key (missing, null, a
    list...) is an error here, before anything runs, unless bad rows are skipped: then the run records it as a
    failure at its position (and the second value says the stream must look at every key). Keys of two types
    are always refused."""
    seen: dict[Any, str] = {}
    later: set[int] = set()
    kinds = KeyKinds(key)
    bad_keys = False
    for pos, line, record in source.rows(lambda p: True, None):
        if type(record) is BadRow:
            continue  # reported, with its line, by the run itself
        where = source.where(line)
        value = record.get(key)
        problem = missing_key(record, key) if value is None else bad_key(value, key)
        if problem is not None:
            if skip_bad_rows:
                bad_keys = True
                continue
            raise InputError(f"{where}: {problem}. Fix the row, or pass {option('skip_bad_rows')} to record it as a "
                             "failure.")
        kinds.check(value, where)
        first = seen.setdefault(value, where)
        if first is not where:
            if not dedupe:
                raise InputError(f"duplicate key {key}={value!r}: {first} and {where}. Keys must be unique; "
                                 f"pass {option('dedupe')} to keep the first occurrence.")
            later.add(pos)
    return later, bad_keys


KEY_TYPES = (str, int, float)


def bad_key(value: Any, key: str) -> str | None:
    """Why a value cannot be a key (a list, a dict, a bool...), or None. Keys are strings or numbers."""
    if type(value) in KEY_TYPES:
        return None
    text = repr(value) if type(value) in (bool, bytes) else f"a {type(value).__name__}"
    return f"key column '{key}' holds {text}; a key is a string or a number"


class KeyKinds:
    """The type of the first key and where it was: a key of another type (1 and "1") is refused naming both rows,
    since keeping both verbatim would need a typeless key column and converting one would alter it."""

    __slots__ = ("column", "first")

    def __init__(self, column: str):
        self.column = column
        self.first: tuple[type, Any, str] | None = None

    def check(self, value: Any, where: str) -> None:
        if self.first is None:
            self.first = (type(value), value, where)
        elif type(value) is not self.first[0]:
            kind, first, first_where = self.first
            raise InputError(f"key column '{self.column}' mixes types: {kind.__name__} {first!r} at {first_where} "
                             f"and {type(value).__name__} {value!r} at {where}. Keys must all be of one type "
                             "(all numbers or all strings); fix the input.")


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
                          f"'{key}' (columns: {', '.join(columns)}). Check {option('key', None)}.")


def _columns_hint(source: Source) -> str:
    """' (columns: a, b)' from the first readable row, to show what --key could be."""
    for _, _, record in source.rows(lambda p: True, None):
        if type(record) is not BadRow:
            return f" (columns: {', '.join(map(str, record)) or 'none'})"
    return ""
