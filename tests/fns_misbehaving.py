"""Functions that misbehave on purpose (tests/test_misbehaving.py, RELIABILITY #17). Each record says how in its
"how" field; records with an empty "how" are innocent and return a plain result."""

from __future__ import annotations

import asyncio
import os
import posix
import sys
import time


def _misbehave(how: str) -> object:
    if how == "os_exit":
        os._exit(0)
    if how == "posix_exit":  # the same call, reached so that no Python-level guard can see it
        posix._exit(0)
    if how == "sys_exit":
        sys.exit(3)
    if how == "keyboard":
        raise KeyboardInterrupt
    if how == "base":
        raise BaseException("a bare BaseException")
    if how == "object":
        return {"value": object()}
    if how == "generator":
        return {"value": (x for x in range(3))}
    if how == "nested":
        return {"value": [{"deep": {1, 2}}]}
    if how == "top_object":
        return object()
    if how == "secret":
        raise RuntimeError(f"authentication failed with key {os.environ.get('DURABATCH_TEST_API_KEY')}")
    return None


def misbehaves(record: dict) -> object:
    how = record.get("how") or ""
    if how == "swallow":  # an ordinary `except Exception` around a hang (HumanEval tasks 7, 77, 147)
        try:
            time.sleep(60)
        except Exception:  # noqa: BLE001
            return {"value": "swallowed the timeout"}
    if how == "late":  # ignores the interrupt altogether and returns after its deadline
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: BLE001, S110
                pass
        return {"value": "returned late"}
    result = _misbehave(how)
    return result if how else {"value": f"ok-{record['id']}"}


def misbehaves_batch(records: list[dict]) -> list:
    return [misbehaves(r) for r in records]


async def amisbehaves(record: dict) -> object:
    how = record.get("how") or ""
    if how == "swallow":
        try:
            await asyncio.sleep(60)
        except Exception:  # noqa: BLE001
            return {"value": "swallowed the timeout"}
    if how == "late":
        try:
            await asyncio.sleep(60)
        except BaseException:  # noqa: BLE001 - swallows the cancellation
            await asyncio.sleep(0.2)
            return {"value": "returned late"}
    await asyncio.sleep(0)
    result = _misbehave(how)
    return result if how else {"value": f"ok-{record['id']}"}


def _child(code: int) -> None:
    os._exit(code)  # in a forked child: the real os._exit, whatever durabatch does in the runner


def forks_a_child(record: dict) -> dict:
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_child, args=(7,))
    child.start()
    child.join(60)
    return {"child_exit": child.exitcode}
