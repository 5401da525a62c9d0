"""Response cache keyed by (model, messages, params): a redelivered record does not pay twice.

SQLite in WAL mode so several worker processes on one machine can share it; only responses
that passed validation are stored.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any], scope: str = "") -> str:
    body: dict[str, Any] = {"model": model, "messages": messages, "params": params}
    if scope:  # absent when empty, so entries written before scopes existed stay valid
        body["scope"] = scope
    blob = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class ResponseCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, orjson.dumps(value)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
