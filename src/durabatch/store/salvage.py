"""Reading what a damaged ledger still holds (its first pages often survive), for `verify --repair` to rebuild it.
Read-only, with its own connection: the ledger itself could not be opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def salvage(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """What a damaged ledger still gives (its first pages often survive): (meta k -> v as stored, shard name ->
    checksum); empty where nothing can be read."""
    def query(sql: str) -> list[tuple[Any, ...]]:
        if not path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return []

    meta = {k: v for k, v in query("SELECT k, v FROM meta") if k != "schema_version"}
    return meta, dict(query("SELECT name, checksum FROM shards"))
