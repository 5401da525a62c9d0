"""Response cache keyed by (model, messages, params): a redelivered record does not pay twice.

SQLite in WAL mode so several worker processes on one machine can share it; only responses
that passed validation are stored. Reads are point lookups done in place (cheaper than a hop to a
thread); writes are gathered and written together, off the event loop, a moment later (a crash
loses at most that moment's entries, which only costs asking again).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
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
        self._use_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._unwritten: dict[str, bytes] = {}
        self._writing: dict[str, bytes] = {}
        self._writer: asyncio.Task[None] | None = None

    WRITE_DELAY = 0.1  # seconds puts gather before they are written in one transaction
    OPEN_TIMEOUT = 30.0  # seconds to wait for other processes opening the same cache

    def _use_wal(self) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without waiting out the busy
        timeout, when another process is switching the same new file at that moment (workers started
        together do): wait and ask again."""
        deadline = time.monotonic() + self.OPEN_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, key: str) -> dict[str, Any] | None:
        if (unwritten := self._unwritten.get(key) or self._writing.get(key)) is not None:
            return orjson.loads(unwritten)
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store soon (from a running event loop), or now (without one)."""
        self._unwritten[key] = orjson.dumps(value)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(self.WRITE_DELAY)
        # Taken in the loop's thread (where puts happen); readable by `get` until written.
        self._writing, self._unwritten = self._unwritten, {}
        try:
            await asyncio.to_thread(self._write_rows, list(self._writing.items()))
        finally:
            self._writing = {}

    def _write(self) -> None:
        rows, self._unwritten = list(self._unwritten.items()), {}
        self._write_rows(rows)

    def _write_rows(self, rows: list[tuple[str, bytes]]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")  # one transaction for the batch (the connection autocommits)
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._write()
        with self._lock:
            self._db.close()
