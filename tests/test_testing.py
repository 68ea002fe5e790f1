"""durabatch.testing, the fakes users test their own jobs with: a fake clock driving a minute of rate limiting in
milliseconds, Flaky retried to success, Poison quarantined on the processes engine, the local server answering
the official openai client on 127.0.0.1."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest

import durabatch
from durabatch.policies.limits import ApiMetrics, RateLimiter, TokenBucket
from durabatch.testing import (
    Calls,
    FakeClock,
    Flaky,
    LLMServer,
    Poison,
    PoisonError,
    ServerConfig,
    TransientError,
    answer_for,
)


def double(record: dict) -> dict:
    """Module-level, so spawned workers can import it."""
    return {"double": record["id"] * 2}


def records(n: int) -> list[dict]:
    return [{"id": i} for i in range(n)]


def exported(tmp_path, failed: bool = False):
    out = tmp_path / ("failed.parquet" if failed else "out.parquet")
    durabatch.export(tmp_path / "run", to=out, failed=failed)
    return pq.read_table(out)


# -- FakeClock -----------------------------------------------------------------------------------------------------
def test_fake_clock_moves_only_when_told():
    clock = FakeClock(start=100.0)
    assert clock() == 100.0 and clock() == 100.0
    assert clock.advance(2.5) == 102.5
    clock.sleep(0.5)
    clock.sleep(-1)  # like time.sleep(0): no wait, no error
    assert clock() == 103.0
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


def test_token_bucket_waits_on_a_fake_clock():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=4, clock=clock)
    assert [bucket.reserve() for _ in range(4)] == [0.0] * 4  # the burst
    assert bucket.reserve() == pytest.approx(0.5)  # then callers queue in arrival order
    assert bucket.reserve() == pytest.approx(1.0)
    clock.advance(60)
    assert bucket.reserve(4) == 0.0  # a minute later the bucket is full again, and no fuller than its capacity
    assert bucket.reserve() == pytest.approx(0.5)


def test_a_minute_of_rate_limiting_runs_in_milliseconds():
    """600 rpm over a fake minute: no one-second window above 10 requests, and nearly all of the limit used."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, clock=clock)
    metrics = ApiMetrics(clock=clock)
    sent: list[float] = []
    while True:
        clock.sleep(limiter.wait_time())
        if clock() >= 60:
            break
        metrics.started()
        sent.append(clock())
        metrics.finished({"prompt": 10, "completion": 2, "total": 12})
    per_second = [sum(1 for t in sent if s <= t < s + 1) for s in range(60)]
    assert max(per_second) <= 10
    assert 0.97 * 600 <= len(sent) <= 600
    snapshot = metrics.snapshot()
    assert 0.97 * 600 <= snapshot["requests_per_min"] <= 600
    assert snapshot["tokens"] == 12 * len(sent)


def test_retry_after_pauses_the_limiter_on_the_fake_clock():
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, clock=clock)
    limiter.on_rate_limited(retry_after=30)
    assert limiter.pause_left() == 30
    assert limiter.wait_time() == pytest.approx(30)
    clock.sleep(30)
    assert limiter.pause_left() == 0 and limiter.rate_limited == 1


# -- Calls, Flaky, Poison ------------------------------------------------------------------------------------------
def test_calls_count_exactly_under_concurrent_writers(tmp_path):
    calls = Calls(tmp_path / "calls")
    seen: list[int] = []

    def hammer() -> None:
        seen.extend(calls.add("k/1") for _ in range(50))  # a key that is not a file name

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 401))
    assert calls.counts() == {"k/1": 400} and calls.count("k/1") == 400 and calls.count("other") == 0


def test_wrappers_survive_pickling(tmp_path):
    flaky = pickle.loads(pickle.dumps(Flaky(double, tmp_path / "calls", failures=2)))
    assert flaky.failures == 2 and flaky.calls.directory == tmp_path / "calls"
    poison = pickle.loads(pickle.dumps(Poison(double, keys=[13], how="segfault")))
    assert poison({"id": 1}) == {"double": 2} and poison.keys == {"13"}
    with pytest.raises(ValueError, match="expected exit"):
        Poison(double, keys=[1], how="explode")


@pytest.mark.parametrize("engine", [("inline", 1), ("processes", 2)], ids=["inline", "processes"])
def test_flaky_is_retried_to_success(tmp_path, engine):
    """Two transient failures per key, three attempts: every item succeeds on its third call, in any worker."""
    flaky = Flaky(double, tmp_path / "calls", failures=2)
    summary = durabatch.run(flaky, records(20), key="id", run_dir=tmp_path / "run", engine=engine[0],
                            workers=engine[1], backoff_base=0, progress="off")
    assert summary.exit_code == 0 and summary.done == 20
    assert flaky.calls.counts() == {str(i): 3 for i in range(20)}
    assert exported(tmp_path).column("double").to_pylist() == [2 * i for i in range(20)]


def test_flaky_beyond_max_attempts_fails_only_its_key(tmp_path):
    flaky = Flaky(double, tmp_path / "calls", failures=5, keys=[7])
    summary = durabatch.run(flaky, records(20), key="id", run_dir=tmp_path / "run", backoff_base=0,
                            max_attempts=3, progress="off")
    assert summary.exit_code == 1 and summary.done == 19 and summary.failed == 1
    assert flaky.calls.count(7) == 3 and all(flaky.calls.count(i) == 1 for i in range(20) if i != 7)
    failed = exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["7"]
    assert TransientError.__name__ in failed.column("error_type").to_pylist()[0]


def test_poison_raise_fails_its_key_without_retries(tmp_path):
    summary = durabatch.run(Poison(double, keys=[3], how="raise"), records(10), key="id", run_dir=tmp_path / "run",
                            backoff_base=0, progress="off")
    assert summary.exit_code == 1 and summary.failed == 1
    failed = exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["3"] and failed.column("state").to_pylist() == ["failed"]
    assert PoisonError.__name__ in failed.column("error_type").to_pylist()[0]


@pytest.mark.parametrize("how, reason", [("segfault", "signal 11"), ("exit", "exited with code 3")])
def test_poison_that_kills_its_worker_is_quarantined_alone(tmp_path, how, reason):
    summary = durabatch.run(Poison(double, keys=[13], how=how), records(40), key="id", run_dir=tmp_path / "run",
                            engine="processes", workers=2, progress="off")
    assert summary.exit_code == 1 and summary.failed == 1 and summary.done == 39
    assert exported(tmp_path).column("id").to_pylist() == [i for i in range(40) if i != 13]
    failed = exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["13"]
    assert failed.column("state").to_pylist() == ["quarantined"]
    assert reason in failed.column("message")[0].as_py()
    info = durabatch.status(tmp_path / "run")
    assert info["quarantined"] == 1 and info["quarantined_items"][0]["key"] == "13"


def test_poison_hang_is_stopped_by_the_item_timeout(tmp_path):
    summary = durabatch.run(Poison(double, keys=[5], how="hang"), records(12), key="id", run_dir=tmp_path / "run",
                            engine="processes", workers=2, item_timeout=1, backoff_base=0, progress="off")
    assert summary.exit_code == 1 and summary.failed == 1 and summary.done == 11
    failed = exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["5"]
    assert "item-timeout" in failed.column("message")[0].as_py()


# -- the local server ----------------------------------------------------------------------------------------------
def test_server_answers_the_official_openai_client():
    openai = pytest.importorskip("openai")
    prompt = "Which letter comes first?"
    with LLMServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0)
        response = client.chat.completions.create(model="local", messages=[{"role": "user", "content": prompt}])
        client.close()
        assert response.choices[0].message.content == f"Answer: {answer_for(prompt)}"
        assert response.usage.total_tokens == response.usage.prompt_tokens + 3
        assert server.log.ok == 1


def test_server_answers_429_with_retry_after_over_its_limit():
    openai = pytest.importorskip("openai")
    with LLMServer(ServerConfig(rpm=1, window=60)) as server:  # one request per minute-long window
        client = openai.OpenAI(base_url=server.url, api_key="sk-local", max_retries=0)
        ask = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
        client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**ask)
        client.close()
    assert 0 < float(caught.value.response.headers["retry-after"]) <= 60
    assert len(server.log.rejections) == 1 and server.log.ok == 1


def test_importing_durabatch_testing_loads_no_optional_dependency():
    code = ("import sys, durabatch.testing; "
            "print(sorted({'openai', 'torch', 'ray', 'datasets', 'httpx'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
