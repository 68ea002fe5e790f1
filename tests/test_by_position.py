"""Reading by position (ray_reads "actors"): the driver's key-only view gives exactly the positions, keys and
bad rows FileSource gives, reading only the key; an actor's RowReader gives exactly FileSource's rows for any
positions, seeking to bookmarks instead of rereading files from their start."""

from __future__ import annotations

import json
import os
import pickle
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from durabatch.columns import ArrowRecords, join
from durabatch.errors import ConfigError, InputError
from durabatch.intervals import From
from durabatch.sources import keys_only
from durabatch.sources.base import BadRow
from durabatch.sources.files import FileSource
from durabatch.sources.keys_only import KeysOnly
from durabatch.sources.row_reader import RowReader


class Positions(set):
    """A set-based `wanted` that says where it starts (as a plan's does)."""

    def __init__(self, positions):
        super().__init__(positions)
        self.lo = min(positions)


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return str(path)


def jsonl_lines(ids, every_blank=0, bad=()):
    lines = []
    for n, i in enumerate(ids):
        if every_blank and n % every_blank == 1:
            lines.append("" if n % 2 else "   ")
        lines.append("{oops" if i in bad else json.dumps({"id": i, "text": "t" * (i % 23), "n": i * 2}))
    return lines


def write_parquet(path, ids, groups, heavy=0):
    columns = {"id": ids, "text": [f"row {i}" for i in ids]}
    if heavy:
        columns["blob"] = [os.urandom(heavy) for _ in ids]
    pq.write_table(pa.table(columns), path, row_group_size=max(1, len(ids) // groups))
    return str(path)


@pytest.fixture
def small_blocks(monkeypatch):
    """Key blocks of a few lines, so that files span many blocks and a fallback starts mid-file."""
    monkeypatch.setattr(keys_only, "KEY_BLOCK", 1500)
    monkeypatch.setattr(keys_only, "KEY_ROWS", 50)


@pytest.fixture
def inputs(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", jsonl_lines(range(0, 300), every_blank=17))
    b = write_parquet(tmp_path / "b.parquet", list(range(300, 700)), groups=4)
    c = write_lines(tmp_path / "c.jsonl", jsonl_lines(range(700, 900)))
    return [a, b, c]


def expected_keys(paths, key, wanted, end):
    """What the driver would make of FileSource's rows: (position, where, {key: value} or {} or BadRow)."""
    source, out = FileSource(paths), []
    for positions, lines, records in source.blocks(wanted, end):
        for pos, line, record in zip(positions, lines, records, strict=True):
            if type(record) is not BadRow:
                record = {key: record[key]} if key in record else {}
            out.append((pos, source.where(line), record))
    return out


def keys_read(view, wanted, end):
    out = []
    for positions, handles, records in view.blocks(wanted, end):
        assert len(positions) == len(handles) == len(records)
        out += [(p, view.where(h), r) for p, h, r in zip(positions, handles, records, strict=True)]
    return out


WANTED = {
    "all": (From(0), None),
    "from mid first file": (From(123), None),
    "from the Parquet file, end mid last file": (From(450), 777),
    "a set, end mid Parquet": (Positions([5, 6, 7, 299, 300, 301, 512, 640, 641]).__contains__, 600),
    "a set without lo": ({3, 150, 350, 890}.__contains__, None),
    "end before anything": (From(10), 10),
}


@pytest.mark.parametrize("name", WANTED)
def test_keys_only_gives_filesource_positions_keys_and_places(inputs, small_blocks, name):
    wanted, end = WANTED[name]
    view = KeysOnly(FileSource(inputs), "id")
    got = keys_read(view, wanted, end)
    assert got == expected_keys(inputs, "id", wanted, end)
    assert name == "end before anything" or got
    for _, _, records in view.blocks(wanted, end):  # clean files: every block is one column read by Arrow
        assert type(records) is ArrowRecords and records.table.column_names == ["id"]


def test_keys_only_names_places_with_their_file(inputs, small_blocks):
    view = KeysOnly(FileSource(inputs), "id")
    places = {p: where for p, where, _ in keys_read(view, From(0), None)}
    assert places[0] == f"{inputs[0]} line 1"
    assert places[299] == f"{inputs[0]} line {300 + 18}"  # 18 blank lines before the last row of a.jsonl
    assert places[305] == f"{inputs[1]} row 6"
    assert places[700] == f"{inputs[2]} line 1"


AT = 70  # the line index of the trouble: past the first key blocks (1500 bytes, ~40 lines)
TROUBLES = {
    "malformed line": lambda lines: lines[:AT] + ["{oops"] + lines[AT:],
    "missing key": lambda lines: lines[:AT] + ['{"text": "no key"}'] + lines[AT:],
    "null key": lambda lines: lines[:AT] + ['{"id": null}'] + lines[AT:],
    "keys of two types": lambda lines: lines[:AT] + ['{"id": "forty"}'] + lines[AT:],
    "not an object": lambda lines: lines[:AT] + ["[1, 2]"] + lines[AT:],
    "two objects on a line": lambda lines: lines[:AT] + ['{"id": -1} {"id": -2}', ""] + lines[AT:],
    "nests too deeply": lambda lines: lines[:AT] + ['{"id": -3, "x": ' + "[" * 4000 + "]" * 4000 + "}"] + lines[AT:],
    "bad UTF-8": lambda lines: lines[:AT] + [b'{"id": "\xff"}'] + lines[AT:],
    "float key": lambda lines: lines[:AT] + ['{"id": 1.5}'] + lines[AT:],
    "a BOM": lambda lines: [b"\xef\xbb\xbf" + lines[0].encode()] + lines[1:],
}


@pytest.mark.parametrize("trouble", TROUBLES)
def test_keys_only_falls_back_to_the_exact_reader(tmp_path, small_blocks, trouble):
    lines = TROUBLES[trouble](jsonl_lines(range(100), every_blank=9))
    paths = [write_lines(tmp_path / "x.jsonl", lines), write_parquet(tmp_path / "y.parquet", [1000, 1001], 1)]
    view = KeysOnly(FileSource(paths), "id")
    for wanted, end in [(From(0), None), (From(30), None), (Positions([2, 45, 50, 101]).__contains__, 102)]:
        got = keys_read(view, wanted, end)
        assert got == expected_keys(paths, "id", wanted, end)
    rows = {p: r for p, _, r in keys_read(view, From(0), None)}
    before = [type(r) for _, _, r in view.blocks(From(0), 20)]
    assert before and all(t is ArrowRecords for t in before) != (trouble == "a BOM")  # before the trouble: Arrow
    at = sum(1 for line in lines[:AT] if line.strip())  # the trouble's position
    if trouble in ("malformed line", "not an object", "bad UTF-8"):
        assert type(rows[at]) is BadRow and rows[at].where == f"{paths[0]} line {AT + 1}"
    if trouble == "missing key":
        assert rows[at] == {}  # kept missing, so that the driver says so


def test_keys_only_reads_only_the_key_column_of_parquet(tmp_path):
    path = write_parquet(tmp_path / "heavy.parquet", list(range(64)), groups=4, heavy=200_000)  # ~13 MB of blobs
    view = KeysOnly(FileSource([path]), "id")
    list(view.blocks(From(0), None))  # warm: imports, metadata
    before = bytes_read()
    keys = [k for _, _, records in view.blocks(From(0), None) for k in records.column("id")]
    keys_cost = bytes_read() - before
    before = bytes_read()
    rows = list(FileSource([path]).rows(From(0), None))
    rows_cost = bytes_read() - before
    assert keys == list(range(64)) and len(rows) == 64
    assert rows_cost > 12_000_000  # the observable sees a full read...
    assert keys_cost < 500_000  # ...and the key pass did not read the blobs


def bytes_read():
    """Bytes this process read through read()/pread() (all threads): Linux's count, whatever caches held."""
    try:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])
    except OSError:
        pytest.skip("needs /proc/self/io")


def reference_rows(paths):
    return {pos: record for pos, _, record in FileSource(paths).rows(From(0), None)}


@pytest.fixture
def messy(tmp_path):
    """JSON lines with blank and bad lines, a Parquet file of several row groups, a second JSON lines file."""
    a = write_lines(tmp_path / "a.jsonl", jsonl_lines(range(0, 700), every_blank=13, bad={50, 333}))
    b = write_parquet(tmp_path / "b.parquet", list(range(700, 1300)), groups=5)
    c = write_lines(tmp_path / "c.jsonl", jsonl_lines(range(1300, 1500)))
    return [a, b, c]


@pytest.mark.parametrize("columnar", [False, True])
@pytest.mark.parametrize("files", ["one JSON lines file", "one Parquet file", "three files"])
def test_row_reader_reads_what_filesource_reads(messy, columnar, files):
    paths = {"one JSON lines file": messy[:1], "one Parquet file": messy[1:2], "three files": messy}[files]
    expected = reference_rows(paths)
    reader = RowReader(paths, columnar=columnar, block_size=2048)
    source = FileSource(paths)
    rng = random.Random(f"{files}{columnar}")
    batches = [list(range(lo, min(lo + 37, len(expected)))) for lo in range(0, len(expected), 37)]  # in order
    batches += [sorted(rng.sample(range(len(expected)), 25)) for _ in range(8)]  # retries, anywhere
    batches += [rng.sample(range(len(expected)), 25) for _ in range(8)]  # in any order
    for positions in batches:
        got = reader.read(positions)
        assert len(got) == len(positions)
        assert [without_nulls(r) for r in got] == [expected[p] for p in positions]
        increasing = positions == sorted(positions)
        if columnar and increasing:  # the rows FileSource's columnar blocks give, joined (fields missing in
            # one file are null there)
            pieces = [records for _, _, records in source.blocks(set(positions).__contains__, None, True)]
            assert list(got) == list(join(pieces))
        clean = files == "one Parquet file" or files == "three files" and min(positions) >= 700
        if columnar and increasing and clean:
            assert type(got) is ArrowRecords  # Parquet, and JSON lines without blank or bad lines: Arrow's
        if not columnar or not increasing:
            assert type(got) is list


def without_nulls(record):
    """A columnar batch's row, as FileSource.rows gives it (a field of another file is null in a joined table)."""
    return {k: v for k, v in record.items() if v is not None} if type(record) is dict else record


def test_row_reader_gives_bad_rows_as_filesource_names_them(messy):
    reader = RowReader(messy)
    bad = [r for r in reader.read([51, 50, 333, 334]) if type(r) is BadRow]
    assert [b.where for b in bad] == [r.where for r in reference_rows(messy).values() if type(r) is BadRow]
    assert len(bad) == 2 and "malformed JSON" in bad[0].message


def test_row_reader_past_the_end_is_an_input_error(messy):
    reader = RowReader(messy)
    with pytest.raises(InputError, match="position 1500 is past the end of the input"):
        reader.read([3, 1500])
    assert reader.read([1499]) == [reference_rows(messy)[1499]]


def test_bookmarks_spare_rereading_a_big_file_from_its_start(tmp_path):
    path = write_lines(tmp_path / "big.jsonl", jsonl_lines(range(40_000), every_blank=101))  # ~2 MB
    size = os.path.getsize(path)
    reader = RowReader([path], block_size=16_384)
    expected = reference_rows([path])
    assert reader.read([10]) == [expected[10]]  # warm
    before = bytes_read()
    assert reader.read([39_000, 39_001]) == [expected[39_000], expected[39_001]]
    first = bytes_read() - before
    before = bytes_read()
    assert reader.read([39_500, 39_100, 39_999]) == [expected[39_500], expected[39_100], expected[39_999]]
    second = bytes_read() - before
    assert first > 0.9 * size  # the first read came from the start...
    assert second < 0.05 * size  # ...the second from a bookmark near its positions
    clone = pickle.loads(pickle.dumps(reader))  # what an actor gets: the files, not what this process learned
    assert len(pickle.dumps(reader)) < 2000 and clone.read([39_998]) == [expected[39_998]]


def test_row_reader_reads_only_the_row_groups_it_needs(tmp_path):
    path = write_parquet(tmp_path / "heavy.parquet", list(range(80)), groups=4, heavy=100_000)  # 4 x 2 MB
    reader = RowReader([path])
    reader.read([0])  # warm: imports, metadata
    before = bytes_read()
    rows = reader.read([45, 41])
    one_group = bytes_read() - before
    before = bytes_read()
    again = reader.read([42, 43, 44])
    cached = bytes_read() - before
    assert [r["id"] for r in rows + again] == [45, 41, 42, 43, 44]
    assert 1_500_000 < one_group < 3_000_000  # row group 2 (positions 40..59) only
    assert cached < 100_000  # the same row group again: kept from the last read


def test_csv_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,text\n1,a\n")
    with pytest.raises(ConfigError, match=r"data\.csv: actors read JSONL and Parquet inputs; convert the CSV"):
        RowReader([str(path)])
    with pytest.raises(ConfigError, match=r"data\.csv"):
        KeysOnly(FileSource([str(path)]), "id")


def test_a_file_changed_under_the_run_is_refused(messy):
    reader = RowReader.for_source(FileSource(messy))
    assert reader.read([1400]) == [reference_rows(messy)[1400]]
    with open(messy[2], "a") as f:
        f.write('{"id": 5000}\n')
    with pytest.raises(InputError, match=r"c\.jsonl changed during the run"):
        reader.read([1400])
    assert reader.read([800])  # the files it does not read are not its concern


def test_relative_paths_are_read_from_anywhere_and_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    write_lines(tmp_path / "in" / "a.jsonl", jsonl_lines(range(20), bad={7}))
    monkeypatch.chdir(tmp_path)
    expected = reference_rows(["in/a.jsonl"])
    reader = pickle.loads(pickle.dumps(RowReader(["in/a.jsonl"])))  # made where the driver runs...
    monkeypatch.chdir(tmp_path / "in")  # ...used where an actor runs
    assert reader.read([8, 7]) == [expected[8], expected[7]]
    assert reader.read([7])[0].where == "in/a.jsonl line 8"
