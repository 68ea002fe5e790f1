"""User functions for the engine and source tests (importable by spawned worker processes)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import posix


def digest(record: dict) -> dict:
    return {"digest": hashlib.blake2b(str(record["id"]).encode(), digest_size=8).hexdigest()}


def digest_batch(records: list[dict]) -> list[dict]:
    return [digest(r) for r in records]


def fails_on_sevens(record: dict) -> dict:
    if record["id"] % 7 == 0:
        raise RuntimeError(f"seven {record['id']}")
    return digest(record)


def batch_fails_on_sevens(records: list[dict]) -> list[dict]:
    if any(r["id"] % 7 == 0 for r in records):
        raise RuntimeError("a seven in this batch")
    return digest_batch(records)


def wrong_length(records: list[dict]) -> list[dict]:
    return digest_batch(records)[:-1]


def scalar(record: dict) -> int:
    return record["id"] * 3


async def async_digest(record: dict) -> dict:
    await asyncio.sleep(0)
    return digest(record)


class Closes:
    """setup() and teardown(): each worker appends 'setup <id>' and 'teardown <id> <items>' to $TEARDOWN_FILE."""

    def setup(self) -> None:
        self.items = 0
        self._note(f"setup {os.getpid()}-{id(self)}")

    def _note(self, line: str) -> None:
        with open(os.environ["TEARDOWN_FILE"], "a") as f:
            f.write(line + "\n")

    def __call__(self, record: dict) -> dict:
        self.items += 1
        return digest(record)

    def teardown(self) -> None:
        self._note(f"teardown {os.getpid()}-{id(self)} {self.items}")


class AsyncCloses(Closes):
    """The same with async __call__ and async teardown (a client closed inside the engine's loop)."""

    async def __call__(self, record: dict) -> dict:
        await asyncio.sleep(0)
        self.items += 1
        return digest(record)

    async def teardown(self) -> None:
        await asyncio.sleep(0)
        asyncio.get_running_loop()  # inside the engine's loop, while it still runs
        self._note(f"teardown {os.getpid()}-{id(self)} {self.items}")


class Model:
    """A class with setup(): loaded once per worker; records which process/object served each item."""

    def setup(self) -> None:
        self.loaded = f"{os.getpid()}-{id(self)}"
        self.setups = getattr(self, "setups", 0) + 1

    def __call__(self, records: list[dict]) -> list[dict]:
        return [{**digest(r), "worker": self.loaded, "setups": self.setups} for r in records]


def dies_on_13(record: dict) -> dict:
    if record["id"] == 13:
        posix._exit(3)  # really dies: durabatch turns the function's os._exit into that item's failure
    return digest(record)


class FlakyError(ConnectionError):
    pass


_calls: dict[int, int] = {}


def flaky_twice(record: dict) -> dict:
    """Fails with a connection error on the first two calls for each id (in this process)."""
    n = _calls[record["id"]] = _calls.get(record["id"], 0) + 1
    if n <= 2:
        raise FlakyError(f"dropped connection for {record['id']} (call {n})")
    return {"calls": n}


class HTTPError(Exception):
    def __init__(self, status: int, retry_after: float | None = None):
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = {"retry-after": str(retry_after)} if retry_after is not None else {}


def http_429_once(record: dict) -> dict:
    n = _calls[record["id"]] = _calls.get(record["id"], 0) + 1
    if n == 1:
        raise HTTPError(429, retry_after=0.01)
    return {"calls": n}


def value_error(record: dict) -> dict:
    _calls[record["id"]] = _calls.get(record["id"], 0) + 1
    raise ValueError("bad input")


def aborts_on_13(record: dict) -> dict:
    """Kills the whole process (inline engine: the runner itself) on id 13."""
    if record["id"] == 13:
        os.abort()
    return digest(record)


def eats_memory_on_7(record: dict) -> dict:
    if record["id"] == 7:
        hog = []
        while True:
            hog.append(b"x" * (16 << 20))  # touched pages: resident memory really grows
    return digest(record)


def sleeps_on_5(record: dict) -> dict:
    if record["id"] == 5:
        import time

        time.sleep(60)
    return digest(record)


def stuck_on_3(records: list[dict]) -> list[dict]:
    """A batch function stuck where a signal cannot interrupt it (SIGALRM ignored)."""
    import signal
    import time

    if any(r["id"] == 3 for r in records):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(120)
    return digest_batch(records)


def bulky(record: dict) -> dict:
    """About 4 KB of incompressible text per item: fills a small disk fast."""
    return {"blob": hashlib.blake2b(str(record["id"]).encode(), digest_size=64).hexdigest() * 32}


def side_effect(record: dict) -> dict:
    """Bumps an external counter (one appended line per call) in the middle of a slow call."""
    import time

    time.sleep(0.005)
    fd = os.open(os.environ["COUNTER_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{record['id']}\n".encode())
    os.close(fd)
    time.sleep(0.005)
    return {"ok": True}


class OutOfMemoryError(RuntimeError):
    """The shape of torch.cuda.OutOfMemoryError."""


def ooms_above_8(records: list[dict]) -> list[dict]:
    """A batch function whose 'GPU' fits at most 8 records at a time."""
    if len(records) > 8:
        raise OutOfMemoryError(f"CUDA out of memory trying to fit {len(records)} records")
    return [{**digest(r), "batch": len(records)} for r in records]


def counted_digest(record: dict) -> dict:
    """digest(), logging every execution (to count items that ran more than once across kills)."""
    import time

    time.sleep(float(os.environ.get("ITEM_SECONDS", "0.0002")))
    fd = os.open(os.environ["EXECUTIONS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{record['id']}\n".encode())
    os.close(fd)
    return digest(record)


def slow_digest(record: dict) -> dict:
    """digest() with a little work per item, so that a 20,000-item job runs for seconds and kills land mid-run."""
    import time

    time.sleep(0.0001)
    return digest(record)


def sentences(record: dict) -> list[dict]:
    """Split a document into its sentences (segments)."""
    if record.get("broken"):
        raise ValueError("cannot split this one")
    return [{"text": s.strip()} for s in record["text"].split(".") if s.strip()]


def shout(segment: dict) -> dict:
    if "poison" in segment["text"]:
        raise ValueError("poisoned segment")
    return {"upper": segment["text"].upper()}


def join_upper(record: dict, outputs: list) -> dict:
    return {"n_segments": len(outputs), "summary": " / ".join(o["upper"] for o in outputs)}


# -- columns batch functions (batch_format="columns") --------------------------------------------------------------
def digest_columns(batch: dict[str, list]) -> dict[str, list]:
    return {"digest": [digest({"id": i})["digest"] for i in batch["id"]], "text_len": list(map(len, batch["text"]))}


def columns_fail_on_sevens(batch: dict[str, list]) -> dict[str, list]:
    if any(i % 7 == 0 for i in batch["id"]):
        raise RuntimeError("a seven in this batch")
    return digest_columns(batch)


def columns_flaky_on_sevens(batch: dict[str, list]) -> dict[str, list]:
    """A seven fails its first call with a connection error (retried alone): tables and single rows mix."""
    for i in batch["id"]:
        if i % 7 == 0:
            n = _calls[i] = _calls.get(i, 0) + 1
            if n == 1:
                raise FlakyError(f"dropped connection for {i}")
    return digest_columns(batch)


def columns_short(batch: dict[str, list]) -> dict[str, list]:
    return {"digest": batch["text"][:-1]}


def columns_as_arrow(batch: dict[str, list]):
    import pyarrow as pa

    return pa.table({"double": pa.array(batch["id"]) * 2})


def slow_digest_columns(batch: dict[str, list]) -> dict[str, list]:
    import time

    time.sleep(float(os.environ.get("BATCH_SECONDS", "0.01")))
    return digest_columns(batch)
