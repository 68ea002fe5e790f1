"""Seed 004's shape: each document split into segments, one LLM call per segment under the provider's rate
limit, the answers grouped back per document. durabatch's fan-out commits a document only when all of its
segments are done."""

from __future__ import annotations

import re


def segments(doc: dict) -> list[dict]:
    """A document's paragraphs, at most 1,500 characters each (what one call reads)."""
    parts = [p.strip() for p in re.split(r"\n\s*\n", doc["text"]) if len(p.strip()) >= 40]
    return [{"doc": doc["id"], "index": i, "text": p[:1500]} for i, p in enumerate(parts)]


class ExtractConcepts:
    def setup(self) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(max_retries=0, timeout=60)  # durabatch owns retries and the rate

    async def __call__(self, segment: dict) -> dict:
        response = await self.client.chat.completions.create(
            model="gpt-4o-mini", temperature=0,
            messages=[{"role": "system", "content": "List the key technical concepts of the text, comma-separated."},
                      {"role": "user", "content": segment["text"]}])
        concepts = [c.strip() for c in (response.choices[0].message.content or "").split(",") if c.strip()]
        return {"concepts": concepts, "usage": response.usage.model_dump() if response.usage else None}

    async def teardown(self) -> None:
        await self.client.close()  # in the engine's loop, before it stops: no "Event loop is closed" later


def per_document(doc: dict, outputs: list[dict]) -> dict:
    concepts = sorted({c for out in outputs for c in out["concepts"]})
    tokens = sum((out.get("usage") or {}).get("total_tokens", 0) for out in outputs)
    return {"title": doc["title"], "segments": len(outputs), "concepts": concepts, "tokens": tokens}
