"""The evaluation call: one chat completion per question with the official openai client. The model and the
temperature are the job's `params` (job.yaml, or `--param model=...`): part of the job, so a resume with another
model is refused instead of mixing two models' answers. The endpoint comes from OPENAI_BASE_URL (any
OpenAI-compatible server), the key from OPENAI_API_KEY; neither is a job setting, so neither is written to the run
directory or the logs."""

from __future__ import annotations

import re


class AskModel:
    def __init__(self, model: str = "gpt-4o-mini", temperature: float = 0.0):
        self.model = model
        self.temperature = temperature

    def setup(self) -> None:
        from openai import AsyncOpenAI

        # max_retries=0: durabatch retries, waits on 429s and keeps the rate; the client must not double it.
        self.client = AsyncOpenAI(max_retries=0, timeout=60)

    async def __call__(self, item: dict) -> dict:
        response = await self.client.chat.completions.create(
            model=self.model, temperature=self.temperature, messages=[{"role": "user", "content": item["question"]}])
        text = response.choices[0].message.content or ""
        match = re.search(r"\b([ABCD])\b", text.upper())
        given = match.group(1) if match else None
        return {"given": given, "correct": given == item["answer"], "reply": text[:200],
                "usage": response.usage.model_dump() if response.usage else None}

    async def teardown(self) -> None:
        await self.client.close()  # in the engine's loop, before it stops: no "Event loop is closed" later
