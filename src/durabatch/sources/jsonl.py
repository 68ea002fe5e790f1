"""Reading JSON lines fast and exactly: blocks of whole lines are parsed by Arrow in C when Arrow's records are
provably the ones `json.loads` would give (equal, with the same types; only the order of an object's keys may
differ, Arrow keeping their first order in the block); any other block is read line by line in Python, which names
the line of every bad row (malformed JSON, not an object, not UTF-8)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pjson

from ..columns import ArrowRecords
from ..intervals import select
from .base import Block

BLOCK = 1 << 18  # bytes parsed at a time: ~10k short records, ~3 MB of Python objects at most
GIVE_UP = 3  # blocks Arrow could not read faithfully before the rest of the file goes the Python way
DEEP = 3000  # a line with more opening brackets than this is never given to Arrow's JSON parser (whose
# recursion overflows the C stack, a segfault, somewhere past 5,000 levels); Python names it as a bad row
Mark = tuple[int, int, int]  # a bookmark at a block boundary: (byte offset, position, line number) there


def jsonl_blocks(path: str, pos: int, wanted: Callable[[int], bool], end: int | None, bad: Callable[[str, str], Any],
                 block_size: int = BLOCK, columnar: bool = False, start: Mark | None = None,
                 marks: list[Mark] | None = None) -> Generator[Block, None, int | None]:
    """Yields blocks of (positions, line numbers, records or bad(where, message)) for the wanted non-blank lines
    of `path`, positions from `pos`; returns the position after the file's last (where the next file starts),
    or None when `end` was reached. columnar=True: the records of a block Arrow read are ArrowRecords.
    start: a bookmark (offset, position, line number) to begin at instead of the file's start (`pos` is then
    its position). marks: the bookmark after each whole block is appended to it (a later read's `start`)."""
    misses = 0
    offset, lineno = 0, 0
    if start is not None:
        offset, pos, lineno = start
    skip = first_wanted(wanted)
    ahead = pos  # in the reader thread: where its next block starts at most (lines, blank ones included)

    def parse(block: bytes, lines: int) -> pa.Table | bool | None:
        nonlocal ahead
        first, ahead = ahead, ahead + lines
        if first + lines <= skip and block.startswith(b"{") and block.count(b"\n{") == lines - 1:
            return SKIPPED  # wholly before the wanted range (a rank's start): counted, not parsed
        return arrow_table(block, lines) if misses < GIVE_UP else None

    for block, lines, table in read_ahead(path, block_size, parse, offset):
        offset += len(block)  # where the next block starts: a bookmark once this block is wholly read
        if table is SKIPPED:
            pos += lines
            lineno += lines
            if marks is not None:
                marks.append((offset, pos, lineno))
            continue
        if table is not None:  # Arrow read one record per line: positions and line numbers follow
            stop = lines if end is None else max(0, min(lines, end - pos))
            positions = select(wanted, pos, pos + stop)
            picks = None if len(positions) == lines else [p - pos for p in positions]
            records = _table_records(table, picks, columnar) if positions else []
            if records is not None:
                if marks is not None and stop == lines:  # before the yield: a reader done with it has the mark
                    marks.append((offset, pos + lines, lineno + lines))
                if records:
                    numbers = list(range(lineno + 1, lineno + lines + 1)) if picks is None else \
                        [lineno + 1 + i for i in picks]
                    yield positions, numbers, records
                if stop < lines:
                    return None
                pos += lines
                lineno += lines
                continue
        if misses < GIVE_UP:
            misses += 1
        rows, pos, lineno, reached = _line_by_line(block, path, pos, lineno, wanted, end, bad)
        if marks is not None and not reached:
            marks.append((offset, pos, lineno))
        if rows[0]:
            yield rows
        if reached:
            return None
    return pos


def _table_records(table: pa.Table, picks: list[int] | None, columnar: bool) -> Any:
    """The records of a block Arrow read (ArrowRecords, or dicts), or None when Arrow's are not json.loads's."""
    if columnar:  # full validation has checked the UTF-8 that _records checks by decoding
        return ArrowRecords(table if picks is None else table.take(picks))
    return _records(table, picks)


def _line_by_line(block: bytes, path: str, pos: int, lineno: int, wanted: Callable[[int], bool], end: int | None,
                  bad: Callable[[str, str], Any]) -> tuple[Block, int, int, bool]:
    """The block read line by line in Python, naming every bad row: its wanted rows, the position and line number
    after it, and whether `end` was reached in it."""
    positions, numbers, records = [], [], []
    for line in _text_lines(block):
        lineno += 1
        if line is not None and (not line or line.isspace()):
            continue
        if end is not None and pos >= end:
            return (positions, numbers, records), pos, lineno, True
        if wanted(pos):
            positions.append(pos)
            numbers.append(lineno)
            records.append(_parse(line, f"{path} line {lineno}", bad))
        pos += 1
    return (positions, numbers, records), pos, lineno, False


# parse()'s answer for a block wholly before the first wanted position whose every line starts with "{" (so none
# is blank: each is one position). Other blocks (blank lines, which str.isspace finds also in \x1c or U+3000) are
# read the ordinary way, so that skipping counts positions exactly as reading would.
SKIPPED = False


def first_wanted(wanted: Callable[[int], bool]) -> int:
    """The first position `wanted` can accept, when it says (From, a plan's `wanted`); else 0."""
    lo = getattr(wanted, "lo", None)
    if lo is None:
        lo = getattr(getattr(wanted, "__self__", None), "lo", 0)
    return lo if isinstance(lo, int) else 0


def line_blocks(f: BinaryIO, size: int = BLOCK) -> Iterator[bytes]:
    """Blocks of about `size` bytes that end at a line end (a longer line makes a longer block)."""
    tail = b""
    while True:
        chunk = f.read(size)
        if not chunk:
            if tail:
                yield tail
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            tail += chunk
            continue
        yield tail + chunk[:cut + 1]
        tail = chunk[cut + 1:]


def read_ahead(path: str, block_size: int, parse: Callable[[bytes, int], Any], offset: int = 0,
               depth: int = 2) -> Iterator[tuple[bytes, int, Any]]:
    """(block, its line count, parse(block, lines)), read from byte `offset` (a line start) and parsed a few
    blocks ahead in a thread: Arrow parses without the GIL, so parsing overlaps with the run's Python work."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                for block in line_blocks(f, block_size):
                    lines = block.count(b"\n") + (not block.endswith(b"\n"))
                    if not put((block, lines, parse(block, lines))):
                        return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the reader's thread
            put(exc)

    threading.Thread(target=produce, name="durabatch-read-ahead", daemon=True).start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def arrow_table(block: bytes, lines: int) -> pa.Table | None:
    """The block as a table, or None unless Arrow read exactly one record per line and every value converts
    back to what json.loads gives (no nulls or missing fields, no timestamps, no integral floats: Arrow turns
    `1` into `1.0` in a column that also holds `1.5`)."""
    if nests_deeply(block):
        return None
    try:
        table = pjson.read_json(pa.py_buffer(block), read_options=pjson.ReadOptions(
            use_threads=False, block_size=len(block) + 1))
        # Full validation checks UTF-8 and offsets: pyarrow's reader lets bad bytes through and builds an
        # invalid list array from `[null, 0]` (pyarrow 26). Cheap: ~3% of the parse.
        table.validate(full=True)
    except Exception:  # noqa: BLE001 - bad JSON, bad UTF-8, duplicate fields...: the Python path says which line
        return None
    if table.num_rows != lines or table.num_columns == 0:  # blank lines or two objects on a line
        return None
    if not all(_faithful(chunk) for column in table.columns for chunk in column.chunks):
        return None
    return table


def nests_deeply(block: bytes, limit: int = DEEP) -> bool:
    """Whether a line of the block may nest deeper than `limit` (it holds more opening brackets). Cheap: only a
    block with a line longer than `limit` bytes is looked at line by line."""
    step = limit // 2
    find = block.find
    if all(find(b"\n", i, i + step) >= 0 for i in range(0, len(block) - step, step)):
        return False  # a newline in every window of `step` bytes: no line is `limit` bytes long
    return any(len(line) > limit and line.count(b"[") + line.count(b"{") > limit for line in block.split(b"\n"))


def arrow_records(block: bytes, lines: int, picks: list[int] | None = None) -> list[dict] | None:
    """The records at `picks` (line indexes in the block; None: all), or None when Arrow cannot read them
    exactly."""
    table = arrow_table(block, lines)
    return None if table is None else _records(table, picks)


def _records(table: pa.Table, picks: list[int] | None) -> list[dict] | None:
    if picks is not None:
        table = table.take(picks)
    try:
        return table.to_pylist()
    except UnicodeDecodeError:  # Arrow passes bytes through; Python's decoding is the UTF-8 check
        return None


def _faithful(values: pa.Array) -> bool:
    kind = values.type
    if values.null_count:
        return False
    if not len(values) or pa.types.is_int64(kind) or pa.types.is_string(kind) or pa.types.is_boolean(kind):
        return True
    if pa.types.is_float64(kind):
        return not pc.any(pc.equal(pc.floor(values), values)).as_py()
    if pa.types.is_list(kind):
        return _faithful(values.flatten())
    if pa.types.is_struct(kind):
        return all(_faithful(values.field(i)) for i in range(kind.num_fields))
    return False


_decode = json.JSONDecoder().raw_decode


def _text_lines(block: bytes) -> Iterator[str | None]:
    """The block's lines as text; None for a line that is not UTF-8. Decoding the block at once is the common,
    fast case; only a block with a bad byte is decoded line by line to find it."""
    try:
        lines: list[str | None] = block.decode("utf-8").split("\n")  # type: ignore[assignment]
    except UnicodeDecodeError:
        lines = []
        for raw in block.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(None)
    if block.endswith(b"\n"):
        lines.pop()
    return iter(lines)


def _parse(line: str | None, where: str, bad: Callable[[str, str], Any]) -> Any:
    if line is None:
        return bad(where, "not valid UTF-8 text")
    try:
        record, stop = _decode(line, len(line) - len(line.lstrip()))
        if line[stop:].strip():
            raise ValueError(f"extra data after the JSON value at column {stop + 1}")
    except ValueError as exc:
        return bad(where, f"malformed JSON: {exc}")
    except RecursionError:
        return bad(where, "nested too deeply to read (more levels of lists or objects than Python can hold)")
    if not isinstance(record, dict):
        return bad(where, f"expected a JSON object, got {type(record).__name__}")
    return record
