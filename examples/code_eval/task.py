"""One item: ask the model for a solution (official openai client, OPENAI_BASE_URL / OPENAI_API_KEY), then run
it with the problem's tests in the sandbox. The outcome (passed/failed/timeout/crashed and why) is the item's
result, so a hang or a segfault is a row of the dataset; only an API call that keeps failing after durabatch's
retries is a durabatch failure. The model, the temperature and the limits are the job's `params`."""

from __future__ import annotations

import re

from .sandbox import execute, network_isolation

INSTRUCTION = "Complete this Python function. Reply with the whole function in a ```python block.\n\n"
FENCE = re.compile(r"```(?:python|py)?\n(.*?)```", re.DOTALL)


def extract_code(reply: str) -> str:
    """The first fenced block of a chat reply, else the reply itself (a model that answers with bare code)."""
    match = FENCE.search(reply)
    return match.group(1) if match else reply


class SolveAndRun:
    def __init__(self, model: str = "gpt-4o-mini", temperature: float = 0.0, cpu_seconds: int = 3,
                 memory_mb: int = 1024, wall_seconds: float = 6.0):
        self.model = model
        self.temperature = temperature
        self.limits = {"cpu_seconds": cpu_seconds, "memory_mb": memory_mb, "wall_seconds": wall_seconds}

    def setup(self) -> None:
        from openai import OpenAI

        # max_retries=0: durabatch retries, waits on 429s and keeps the rate; the client must not double it.
        self.client = OpenAI(max_retries=0, timeout=60)
        self.network = network_isolation()

    def __call__(self, item: dict) -> dict:
        response = self.client.chat.completions.create(
            model=self.model, temperature=self.temperature,
            messages=[{"role": "user", "content": INSTRUCTION + item["prompt"]}])
        code = extract_code(response.choices[0].message.content or "")
        program = f"{code}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"
        outcome = execute(program, **self.limits)
        usage = response.usage
        return {"status": outcome.status, "reason": outcome.reason, "seconds": round(outcome.seconds, 3),
                "completion": code, "network": self.network,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None}

    def teardown(self) -> None:
        self.client.close()
