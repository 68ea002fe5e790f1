"""Which results can be stored as they are. Checked in the worker, before a result leaves it: a value that only
a repr could store (an object, a generator, a set, a tensor) is that item's failure, never its repr string.

Storable: None, bool, int, float, str, bytes, dates and times, Decimal, numpy scalars and arrays (not of objects),
Arrow values, and lists, tuples and dicts with str keys of those. The common case (a dict of plain scalars) is
checked in C; anything else is walked."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

from ..errors import ErrorKind, ItemError

PLAIN = frozenset({str, int, float, bool, type(None), bytes})
LEAVES = PLAIN | {bytearray, dt.datetime, dt.date, dt.time, dt.timedelta, decimal.Decimal}
_STR = frozenset({str})
_SEQUENCES = frozenset({list, tuple})
_DICT = frozenset({dict})
_NESTABLE = LEAVES | _SEQUENCES | {dict}
MAX_DEPTH = 64


def problem(value: Any) -> str | None:
    """None when `value` can be stored as it is, else what cannot ("field 'x' is a generator")."""
    if type(value) is dict and _STR.issuperset(map(type, value)) and PLAIN.issuperset(map(type, value.values())):
        return None  # the hot path
    return _walk(value, "the result", 0)


def check(outputs: Sequence, errors: dict[int, ItemError]) -> None:
    """Turn each unstorable output (outside `errors`) into that item's error; outputs must be a list."""
    if _all_storable(outputs):
        return
    for i, value in enumerate(outputs):
        if i not in errors and (found := problem(value)) is not None:
            errors[i] = unstorable(found)
            outputs[i] = None  # type: ignore[index]


def _all_storable(values: Sequence) -> bool:
    """True when every value is storable, found level by level with C-speed type sets (a batch of dicts of
    scalars or of lists of floats costs tens of nanoseconds an item); False: look item by item."""
    level: Sequence = values
    for _ in range(MAX_DEPTH):
        kinds = set(map(type, level))
        if kinds <= LEAVES:
            return True
        if not kinds <= _NESTABLE:
            return False  # numpy, subclasses, or something unstorable: the item-by-item walk says
        dicts = level if kinds == _DICT else [v for v in level if type(v) is dict] if dict in kinds else []
        if dicts and not _STR.issuperset(map(type, chain.from_iterable(dicts))):
            return False
        if kinds == _DICT and LEAVES.issuperset(map(type, chain.from_iterable(map(dict.values, dicts)))):
            return True  # the common case, without making a list of the values
        seqs = [v for v in level if type(v) is list or type(v) is tuple] if kinds & _SEQUENCES else []
        level = list(chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(seqs)))
    return False


def column_problems(result: Any, rows: int) -> dict[int, str]:
    """Rows of a columns batch function's result ({field: values}) holding an unstorable value: {row: problem}."""
    if not isinstance(result, Mapping):
        return {}  # a table, or a shape error that from_columns reports
    found: dict[int, str] = {}
    for name, values in result.items():
        if not isinstance(values, list | tuple) or PLAIN.issuperset(map(type, values)):
            continue  # numpy / Arrow columns are typed already
        for row, value in enumerate(values[:rows]):
            if row not in found and (text := _walk(value, f"field {name!r}", 0)) is not None:
                found[row] = text
    return found


def unstorable(text: str) -> ItemError:
    return ItemError(ErrorKind.UNSTORABLE, f"{text}: durabatch stores None, bool, int, float, str, bytes, dates, "
                     "Decimal, numpy/Arrow values, and lists and str-keyed dicts of them; convert it first (its "
                     "repr would be stored otherwise)", "", (ErrorKind.UNSTORABLE,))


def _walk(value: Any, where: str, depth: int) -> str | None:
    kind = type(value)
    if kind in LEAVES:
        return None
    if depth > MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} levels deep (a cycle?)"
    if kind is dict or isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                return f"{where} has a key of type {type(key).__name__}, {key!r:.40} (keys must be str)"
            label = f"field {key!r}" if depth == 0 else f"{where}[{key!r}]"
            if (found := _walk(item, label, depth + 1)) is not None:
                return found
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            if (found := _walk(item, f"{where}[{index}]", depth + 1)) is not None:
                return found
        return None
    module = getattr(kind, "__module__", "") or ""
    if module == "numpy" and getattr(getattr(value, "dtype", None), "kind", "O") != "O":
        return None
    if module.startswith("pyarrow"):
        return None
    if isinstance(value, bool | int | float | str | bytes | dt.date | dt.time | dt.timedelta | decimal.Decimal):
        return None  # subclasses (an IntEnum, a str subclass): Arrow stores their value
    name = kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"
    return f"{where} is of type {name}"
