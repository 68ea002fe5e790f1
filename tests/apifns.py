"""API-calling user functions for the asyncio/threads engine tests, with the official openai client."""

from __future__ import annotations

import os


class AskAsync:
    """An async function object: one AsyncOpenAI client per worker, built in setup()."""

    def setup(self) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=os.environ["LLM_BASE_URL"], max_retries=0, timeout=30)

    async def __call__(self, record: dict) -> dict:
        response = await self.client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": record["question"]}])
        return {"answer": response.choices[0].message.content[-1], "usage": response.usage.model_dump()}

    async def teardown(self) -> None:
        await self.client.close()  # in the engine's loop, before it stops: no "Event loop is closed" later


class AskSync:
    """The same with the sync client, for the threads engine."""

    def setup(self) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=os.environ["LLM_BASE_URL"], max_retries=0, timeout=30)

    def __call__(self, record: dict) -> dict:
        response = self.client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": record["question"]}])
        return {"answer": response.choices[0].message.content[-1], "usage": response.usage.model_dump()}

    def teardown(self) -> None:
        self.client.close()
