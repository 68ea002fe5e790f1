"""A reproducible multiple-choice question set (generated, seeded): arithmetic with four options, one right.
The same seed gives the same questions, options and answer key on any machine."""

from __future__ import annotations

import json
import random
from pathlib import Path


def generate(n: int, seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice("+-*")
        right = a + b if op == "+" else a - b if op == "-" else a * b
        options = {right}
        while len(options) < 4:
            options.add(right + rng.choice([-1, 1]) * rng.randint(1, 30))
        options = sorted(options)
        rng.shuffle(options)
        letters = "ABCD"
        items.append({
            "id": f"q{i:05d}",
            "question": f"What is {a} {op} {b}?\n" + "\n".join(f"{x}) {o}" for x, o in zip(letters, options,
                                                                                          strict=True))
                        + "\nAnswer with the letter only.",
            "answer": letters[options.index(right)],
        })
    return items


def write(path: Path, n: int, seed: int = 2026) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(q) + "\n" for q in generate(n, seed)))
    return path
