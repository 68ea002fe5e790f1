"""A run split into ranks (`--rank K --ranks N`): each rank is a complete ordinary run directory of its own
(ledger, shards, logs, lock, job.json) under RUN_DIR/ranks/<K>-of-<N>, so nothing is shared between nodes (SQLite
over NFS/Lustre is unsafe) and every single-run tool works on one rank alone. RUN_DIR/ranks.json records N (the
first rank to start writes it; a rank started with another N is refused). Rank K covers the contiguous range
[K*n//N, (K+1)*n//N) of the n selected positions, so rank order is source order.

A rank is *finished* when its ledger counts every item of its range as done, failed, quarantined or interrupted
(as `durabatch run` and the supervisor judge it): failed items are finished until `retry-failed` puts them back.
A rank with no ledger yet, or whose range is not all accounted for, is unfinished."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..sources.keys import all_distinct
from .ledger import ItemState, Ledger
from .rundir import RunDir

RANKS_FILE = "ranks.json"
RANKS_FOLDER = "ranks"
COUNT_FILE = "input_count.json"  # the input's row count, counted once for all ranks


def check_rank(rank: int | None, ranks: int | None) -> None:
    """One readable line for a rank setting that cannot work."""
    if rank is None and ranks is None:
        return
    if ranks is None:
        raise ConfigError(f"--rank {rank} needs --ranks N (how many ranks split the input)")
    if rank is None:
        raise ConfigError(f"--ranks {ranks} needs --rank K (which of them this process runs, 0..{ranks - 1})")
    if not 0 <= rank < ranks:
        raise ConfigError(f"--rank {rank} is out of range for --ranks {ranks} (ranks are 0..{ranks - 1})")


def rank_dir(run_dir: str | os.PathLike | RunDir, rank: int, ranks: int) -> RunDir:
    """RUN_DIR/ranks/<K>-of-<N>, zero-padded so that names sort in rank order."""
    width = len(str(ranks))
    return RunDir(_path(run_dir) / RANKS_FOLDER / f"{rank:0{width}d}-of-{ranks:0{width}d}")


def own_dir(run_dir: str | os.PathLike, rank: int | None, ranks: int | None) -> RunDir:
    """The directory a process's own ledger lives in: its rank's, or the run directory itself."""
    return rank_dir(run_dir, rank, ranks) if rank is not None and ranks is not None else RunDir(run_dir)


def ranks_of(run_dir: str | os.PathLike | RunDir) -> int | None:
    """N for a ranked run directory; None when it is not one."""
    path = _path(run_dir) / RANKS_FILE
    try:
        return int(json.loads(path.read_text())["ranks"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); it should hold {{\"ranks\": N}}") from None


def rank_dirs(run_dir: str | os.PathLike | RunDir) -> list[tuple[int, RunDir]]:
    """(K, its directory) for every rank 0..N-1 of a ranked run, started or not; [] when it is not ranked."""
    ranks = ranks_of(run_dir)
    return [(k, rank_dir(run_dir, k, ranks)) for k in range(ranks)] if ranks else []


def claim_ranks(run_dir: str | os.PathLike, ranks: int) -> None:
    """Record N in RUN_DIR/ranks.json (atomically: the first writer wins) or check that it matches; refuse a
    run directory that already holds an unranked run."""
    path = _path(run_dir)
    if RunDir(path).ledger.exists():
        raise ConfigError(f"{path} holds a run that is not split into ranks; use another run directory for "
                          f"--ranks {ranks}")
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{RANKS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"ranks": ranks}) + "\n")
    try:
        os.link(tmp, path / RANKS_FILE)  # fails if it exists: no rank ever overwrites another's N
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    recorded = ranks_of(path)
    if recorded != ranks:
        raise ConfigError(f"{path} is split into {recorded} ranks (ranks.json); this process was started with "
                          f"--ranks {ranks}. Use --ranks {recorded}, or another run directory")


def shared_count(run_dir: str | os.PathLike, identity: dict, count: Callable[[], int | None]) -> int | None:
    """The input's row count (to cut the ranges), counted by the first rank that needs it and kept in
    RUN_DIR/input_count.json for the others: 64 ranks of a 100 GB JSON lines file count its lines once, not 64
    times. Kept with the input's identity (names, sizes, sampled hash): a changed input is counted again."""
    path = _path(run_dir) / COUNT_FILE
    try:
        kept = json.loads(path.read_text())
        if kept["source"] == identity:
            return int(kept["count"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    counted = count()
    if counted is not None:
        tmp = path.with_name(f".{COUNT_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"source": identity, "count": counted}) + "\n")
        os.replace(tmp, path)  # ranks counting at once write the same
    return counted


def refuse_unranked(run_dir: str | os.PathLike) -> None:
    """A plain run on a ranked run directory would start a second, overlapping job: refuse it."""
    ranks = ranks_of(run_dir)
    if ranks is not None:
        raise ConfigError(f"{run_dir} is split into {ranks} ranks; run one with --rank K --ranks {ranks} "
                          f"(K in 0..{ranks - 1})")


def rank_range(lo: int, hi: int, rank: int, ranks: int) -> tuple[int, int]:
    """Rank K's contiguous share [a, b) of the positions [lo, hi)."""
    n = hi - lo
    return lo + rank * n // ranks, lo + (rank + 1) * n // ranks


def fingerprint_entry(rank: int | None, ranks: int | None, share: tuple[int, int], selection: list) -> dict:
    """What a rank adds to its job's fingerprint: resuming its directory with another range is another job."""
    return {"rank": rank, "ranks": ranks, "range": list(share), "selection": selection}


def recorded_range(rd: RunDir, selection: list, source_identity: dict) -> tuple[int, int] | None:
    """The range this rank recorded (job.json) for the same selection of the same input, else None."""
    try:
        fingerprint = json.loads(rd.job.read_text())["fingerprint"]
        entry = fingerprint["rank"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry.get("selection") != selection or fingerprint.get("source") != source_identity:
        return None
    start, end = entry["range"]
    return int(start), int(end)


def left_to_do(rd: RunDir) -> int | None:
    """Items of this run directory's range not yet done, failed, quarantined or interrupted; None when unknown
    (no ledger yet, or a total not yet known)."""
    if not rd.ledger.exists():
        return None
    try:
        ledger = Ledger.open_readonly(rd)
    except Exception:  # noqa: BLE001 - a ledger killed while being created: nothing known yet
        return None
    try:
        total = ledger.get_meta("total")
        finished = ledger.count_done() + sum(ledger.count_failures(state) for state in (
            ItemState.FAILED, ItemState.QUARANTINED, ItemState.INTERRUPTED))
    finally:
        ledger.close()
    return None if total is None else max(0, int(total) - finished)


def unfinished_ranks(run_dir: str | os.PathLike | RunDir) -> list[int]:
    """Ranks whose ledger is missing or does not account for every item of their range (failed counts as
    finished, see the module's docstring): what a resubmission should run again."""
    return [k for k, rd in rank_dirs(run_dir) if left_to_do(rd) != 0]


def _path(run_dir: str | os.PathLike | RunDir) -> Path:
    return run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)


def done_of_total(dirs: list[RunDir]) -> tuple[int, str]:
    """(items done, the total as text) over run directories; a rank not started yet makes the total '?'."""
    done, total, known = 0, 0, True
    for rd in dirs:
        if not rd.ledger.exists():
            known = False
            continue
        ledger = Ledger.open_readonly(rd)
        try:
            done += ledger.count_done()
            value = ledger.get_meta("total")
        finally:
            ledger.close()
        known = known and value is not None
        total += int(value or 0)
    return done, f"{total:,}" if known else f"at least {total:,}"


def key_column(rd: RunDir) -> str:
    """The output's key column: the job's --key, else `_key` (content hashes)."""
    try:
        settings = json.loads(rd.job.read_text()).get("settings") or {}
    except (OSError, ValueError):
        settings = {}
    return settings.get("key") or "_key"


def refuse_shared_keys(runs: list[tuple[RunDir, list[dict]]], load: Callable[[RunDir, dict], pa.Table]) -> None:
    """Each rank checked its own keys; a key in two ranks (a duplicate across their ranges) would be exported
    twice: refuse, naming the key and both ranks. The key columns are compared in Arrow (sorted, not hashed)."""
    columns, owners = [], []
    for rank, (rd, shards) in enumerate(runs):
        name = key_column(rd)
        for shard in shards:
            path = rd.shards / shard["name"]
            keys = pq.read_table(path, columns=[name]).column(0) if path.suffix == ".parquet" else \
                load(rd, shard).column(name)
            columns.append(keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys)
            owners.append(pa.array([rank] * len(keys), pa.int32()))
    if not columns or len({c.type for c in columns}) > 1:
        return  # keys of different types in different ranks cannot be equal
    keys = pa.chunked_array(columns)
    if all_distinct(keys):
        return
    table = pa.table({"key": keys, "rank": pa.chunked_array(owners)})
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("rank", "ascending")]))
    same = pc.equal(table["key"][1:], table["key"][:-1])
    first = pc.index(same, True).as_py()
    key, a, b = table["key"][first].as_py(), table["rank"][first].as_py(), table["rank"][first + 1].as_py()
    raise ConfigError(f"key {key!r} is in rank {a} and in rank {b} ({runs[a][0].path} and {runs[b][0].path}): the "
                      "input repeats it across their ranges, and each rank checks only its own. Export refused; "
                      "fix the input (or run it unsplit with --dedupe)")
