"""The batch lane: a stage's LLM calls gathered into batch files for the provider's batch API.

A stage in batch mode (`[stages.NAME.llm] mode = "batch"`) calls the LLM as always; the client hands
the request body to its stage's `BatchLane` instead of posting it, and the call returns when the
batch holding it is done. The stage never knows: its record simply stays in flight longer, and its
input is committed once its outputs are produced, as for any record.

- Gathering: requests wait until `batch_max_requests` or `batch_max_bytes` are gathered, or the oldest
  has waited `batch_max_age` seconds (so a trickle still goes out); then one JSONL file is uploaded and
  one batch created (OpenAI Batch: `POST /v1/files`, `POST /v1/batches`).
- Ids: a request's `custom_id` is a digest of its body (model, messages, sampling, format), so the same
  call made again — a redelivered record, a restarted worker — has the same id.
- Durable records (`BatchRecords`): every batch and the custom_ids in it are recorded *before* the file
  is uploaded, its provider id once the batch is created (the batch also carries our id in its metadata,
  so one created just before a crash is found again by listing), and each request's outcome with its
  result once the batch is done. They live on the broker, in the compacted `batches` topic
  (streamer.state.batch_log: every change acknowledged there before the lane goes on; every worker loads
  the topic at start and follows it), and in SQLite in the data dir as each machine's index and cache.
  A call whose custom_id is in a batch not yet done waits for that batch; one whose result is recorded
  gets it at once; before a batch goes out the lane reads the topic up to its end and looks again. So a
  request is never paid twice: a restarted or rebalanced worker re-attaches, on any machine.
- Outcomes: answered requests are returned (and priced once, when their batch is collected: the cost
  is kept with the batch record). A request in the error file raises `LLMUnavailableError` with the
  provider's error text: the stage's attempts retry it through a later batch, then the dlq has the text.
  The unfinished requests of an expired batch go into the next batch once, then fail like errors; those
  of a cancelled batch fail at once (`BatchCancelledError`, dead-lettered: cancelling means stop paying).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from streamer import metrics
from streamer.backoff import jittered_backoff
from streamer.config import LLMSettings
from streamer.locks import process_alive
from streamer.llm.results import LLMPermanentError, LLMUnavailableError

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
SUBMITTING = "submitting"  # recorded, not yet acknowledged by the provider
UNSENT = "unsent"  # recorded, then its worker stopped before the provider had it: nothing paid, nothing to collect
EXPIRED_RESUBMITS = 1  # an expired batch's unfinished requests go into the next batch this many times
METADATA_KEY = "synthstream_batch"


class BatchCancelledError(LLMPermanentError):
    """The batch holding the request was cancelled (by `synthstream batch cancel` or at the provider)."""


def custom_id(body: dict[str, Any], scope: str = "") -> str:
    """The request's id in a batch file: the same call always gets the same one. As in the response cache,
    a stage run under another version (`scope`) asks again instead of taking the old answers."""
    blob = orjson.dumps({"body": body, "scope": scope} if scope else body, option=orjson.OPT_SORT_KEYS)
    return "ss-" + hashlib.sha256(blob).hexdigest()[:40]


# --------------------------------------------------------------------------- durable records


@dataclass
class BatchRow:
    local_id: str
    stage: str
    endpoint: str
    model: str
    provider_id: str | None
    state: str
    created: float
    updated: float
    requests: int
    bytes: int
    completed: int
    failed: int
    collected: bool
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    owner_pid: int = 0  # the process that submitted it: while it lives, a batch it is still submitting is its own
    owner_host: str = ""
    version: int = 0  # bumped by every change: the newest of a batch's changes on the topic wins

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BatchRecords:
    """Submitted batches and their requests' outcomes, in `<data_dir>/state/<prefix>batches.sqlite`: the
    machine's index. With a `log` (streamer.state.batch_log.BatchLog, set by the worker) every change is
    also queued for the `batches` topic, and `flush` waits until the broker has it."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        with contextlib.suppress(sqlite3.OperationalError):  # a second process switching it at the same moment
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS batches (
                local_id TEXT PRIMARY KEY, stage TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL,
                provider_id TEXT, state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
                requests INTEGER NOT NULL, bytes INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0,
                failed INTEGER NOT NULL DEFAULT 0, collected INTEGER NOT NULL DEFAULT 0,
                cost_usd REAL NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0, error TEXT, owner_pid INTEGER NOT NULL DEFAULT 0,
                owner_host TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS requests (
                custom_id TEXT NOT NULL, local_id TEXT NOT NULL, outcome TEXT, result BLOB, error TEXT,
                PRIMARY KEY (custom_id, local_id));
            CREATE INDEX IF NOT EXISTS requests_by_custom_id ON requests (custom_id);
        """)
        if "version" not in {r[1] for r in self._db.execute("PRAGMA table_info(batches)")}:  # written before it
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it at the same moment
                self._db.execute("ALTER TABLE batches ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        self.log: Any = None  # streamer.state.batch_log.BatchLog (this module knows nothing of Kafka)

    @classmethod
    def of(cls, data_dir: Path, prefix: str) -> BatchRecords:
        return cls(records_path(data_dir, prefix))

    def _write(self, statements: list[tuple[str, Any]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    if args and isinstance(args, list):
                        self._db.executemany(sql, args)
                    else:
                        self._db.execute(sql, args or ())
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add(self, row: BatchRow, custom_ids: list[str]) -> None:
        self._write([
            ("INSERT INTO batches (local_id, stage, endpoint, model, provider_id, state, created, updated, requests, "
             "bytes, owner_pid, owner_host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (row.local_id, row.stage, row.endpoint, row.model, row.provider_id, row.state, row.created, row.updated,
              row.requests, row.bytes, os.getpid(), socket.gethostname())),
            ("INSERT OR REPLACE INTO requests (custom_id, local_id) VALUES (?, ?)",
             [(cid, row.local_id) for cid in custom_ids]),
        ])
        self._published(row.local_id, custom_ids)

    def update(self, local_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        names = ", ".join(f"{k} = ?" for k in fields)
        self._write([(f"UPDATE batches SET {names}, version = version + 1 WHERE local_id = ?",
                      (*fields.values(), local_id))])
        self._published(local_id)

    def collect(self, local_id: str, outcomes: list[tuple[str, str, bytes | None, str | None]], **fields: Any) -> None:
        """A finished batch's outcomes (custom_id, outcome, result, error) and figures, in one transaction."""
        fields.update(collected=1, updated=time.time())
        names = ", ".join(f"{k} = ?" for k in fields)
        self._write([
            ("UPDATE requests SET outcome = ?, result = ?, error = ? WHERE custom_id = ? AND local_id = ?",
             [(outcome, result, error, cid, local_id) for cid, outcome, result, error in outcomes]),
            (f"UPDATE batches SET {names}, version = version + 1 WHERE local_id = ?", (*fields.values(), local_id)),
        ])
        self._published(local_id, [cid for cid, _, _, _ in outcomes])

    # The topic's side (streamer.state.batch_log) ------------------------------------------------
    def _published(self, local_id: str, custom_ids: list[str] | None = None) -> None:
        """Queue the batch's row (and these requests' rows) for the topic, as they now stand."""
        if self.log is None:
            return
        if (row := self.batch(local_id)) is not None:
            self.log.publish_batch(row.as_dict())
        if custom_ids:
            wanted = set(custom_ids)
            for cid, outcome, result, error in self.outcomes(local_id):
                if cid in wanted:
                    self.log.publish_request(cid, local_id, outcome, result, error)

    def outcomes(self, local_id: str) -> list[tuple[str, str | None, bytes | None, str | None]]:
        """The batch's requests: (custom_id, outcome, result, error); outcome None while it is open."""
        return self._read("SELECT custom_id, outcome, result, error FROM requests WHERE local_id = ?", (local_id,))

    def _batch_rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[BatchRow]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return [_row(names, r) for r in rows]

    def batch(self, local_id: str) -> BatchRow | None:
        found = self._batch_rows("SELECT * FROM batches WHERE local_id = ?", (local_id,))
        return found[0] if found else None

    def republish(self, local_id: str) -> None:
        """Queue a batch and all its requests again (the topic lost them: a broker that came back empty)."""
        self._published(local_id, self.custom_ids(local_id))

    async def flush(self) -> None:
        """Wait until the broker has every change queued so far (nothing to wait for without a log)."""
        if self.log is not None:
            await self.log.flush()

    async def sync(self) -> None:
        """Wait until the index holds every change any worker produced so far."""
        if self.log is not None:
            await self.log.sync()

    def apply_batch(self, row: dict[str, Any]) -> None:
        """A batch's row from the topic, unless the index holds a newer change of it (or it is collected here)."""
        names = [f for f in BatchRow.__dataclass_fields__ if f in row]
        values = [int(row[n]) if n == "collected" else row[n] for n in names]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "local_id")
        self._write([(f"INSERT INTO batches ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                      f"ON CONFLICT (local_id) DO UPDATE SET {updates} WHERE excluded.version > batches.version "
                      f"OR excluded.collected > batches.collected", tuple(values))])

    def apply_request(self, cid: str, local_id: str, outcome: str | None, result: bytes | None,
                      error: str | None) -> None:
        """A request's row from the topic: its membership, or its outcome (an outcome is never taken back)."""
        self._write([("INSERT INTO requests (custom_id, local_id, outcome, result, error) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT (custom_id, local_id) DO UPDATE SET outcome = excluded.outcome, "
                      "result = excluded.result, error = excluded.error "
                      "WHERE excluded.outcome IS NOT NULL AND requests.outcome IS NULL",
                      (cid, local_id, outcome, result, error))])

    def history(self, cid: str) -> list[tuple[str, str | None, bytes | None, str | None, bool, str]]:
        """Every batch the request was in, newest first: (local_id, outcome, result, error, collected, state)."""
        rows = self._read(
            "SELECT r.local_id, r.outcome, r.result, r.error, b.collected, b.state FROM requests r "
            "JOIN batches b ON b.local_id = r.local_id WHERE r.custom_id = ? ORDER BY b.created DESC", (cid,))
        return [(a, b, c, d, bool(e), f) for a, b, c, d, e, f in rows]

    def batches(self, stage: str | None = None, *, open_only: bool = False) -> list[BatchRow]:
        where, args = [], []
        if stage is not None:
            where.append("stage = ?")
            args.append(stage)
        if open_only:
            where.append("collected = 0")
        return self._batch_rows("SELECT * FROM batches" + (" WHERE " + " AND ".join(where) if where else "")
                                + " ORDER BY created", tuple(args))

    def custom_ids(self, local_id: str) -> list[str]:
        return [r[0] for r in self._read("SELECT custom_id FROM requests WHERE local_id = ?", (local_id,))]

    def costs(self) -> dict[str, dict[str, float]]:
        """Per stage: the batch lane's cost and tokens, from the collected batches."""
        rows = self._read("SELECT stage, SUM(cost_usd), SUM(prompt_tokens), SUM(completion_tokens), "
                          "SUM(completed) FROM batches GROUP BY stage")
        return {s: {"cost_usd": c or 0.0, "prompt_tokens": p or 0, "completion_tokens": t or 0, "requests": n or 0}
                for s, c, p, t, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(names: list[str], values: tuple[Any, ...]) -> BatchRow:
    row = dict(zip(names, values))
    return BatchRow(**{**row, "collected": bool(row["collected"])})


@contextlib.contextmanager
def existing_records(data_dir: Path, prefix: str) -> Iterator[BatchRecords | None]:
    """This machine's batch records for reading, or None where no batch-mode worker ever wrote any
    (no file is made for a look)."""
    path = records_path(data_dir, prefix)
    if not path.exists():
        yield None
        return
    records = BatchRecords(path)
    try:
        yield records
    finally:
        records.close()


def batch_costs(data_dir: Path, prefix: str) -> dict[str, dict[str, float]]:
    """Per stage, what the batch lane's collected batches cost (empty without batch records)."""
    with existing_records(data_dir, prefix) as records:
        return records.costs() if records is not None else {}


def stored_batches(data_dir: Path, prefix: str) -> list[BatchRow]:
    """Every batch this machine's records hold (none without batch records)."""
    with existing_records(data_dir, prefix) as records:
        return records.batches() if records is not None else []


def records_path(data_dir: Path, prefix: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prefix)
    return Path(data_dir) / "state" / f"{safe}batches.sqlite"


# --------------------------------------------------------------------------- the lane


@dataclass
class _Pending:
    body: dict[str, Any]
    size: int
    futures: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    local_id: str | None = None  # None while gathering
    expired_resubmits: int = 0


class BatchLane:
    """One stage's batch lane on one endpoint and model."""

    def __init__(self, http: Any, settings: LLMSettings, stage: str, records: BatchRecords, prices: Any,
                 scope: str = "") -> None:
        self.http = http  # openai.AsyncOpenAI
        self.settings = settings
        self.stage = stage
        self.records = records
        self.prices = prices  # streamer.llm.prices.Prices
        self.scope = scope  # the stage's version, if any: part of every custom_id
        self.endpoint = settings.base_url or "default"
        self.pending: dict[str, _Pending] = {}
        self.gathering: list[str] = []
        self.gathered_bytes = 0
        self.oldest: float | None = None
        self.live: dict[str, str | None] = {}  # local id -> provider id, polled until collected
        self.awaited: dict[str, float] = {}  # local id -> since when its provider id is awaited (another's batch)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None

    # What the client calls ----------------------------------------------------------------------
    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for `body`, from a batch (this one's, or one submitted before)."""
        await self._start()
        cid = custom_id(body, self.scope)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        pending = self.pending.get(cid)
        if pending is None:
            done, open_batch = self._known(cid)
            if done is not None:
                return done
            pending = self.pending[cid] = _Pending(body, len(orjson.dumps(body)) + 120)
            if open_batch is not None:
                pending.local_id = open_batch  # submitted before (another process, or before a restart)
                self.live.setdefault(open_batch, None)
            else:
                self._gather(cid)
        pending.futures.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            self._forget(cid, future)
            raise

    def _known(self, cid: str) -> tuple[dict[str, Any] | None, str | None]:
        """What the records know of this request, from one read of its history: a result already
        recorded, else the open batch that holds it (local id); raises when its batch was cancelled."""
        history = self.records.history(cid)
        for _, outcome, result, _, _, _ in history:
            if outcome == "ok" and result is not None:
                return orjson.loads(result), None
        if history and history[0][1] == "cancelled":
            raise BatchCancelledError(f"batch request cancelled: {history[0][3]}")
        for local_id, outcome, _, _, collected, _ in history:
            if not collected and outcome is None:
                return None, local_id
        return None, None

    def _gather(self, cid: str) -> None:
        pending = self.pending[cid]
        pending.local_id = None
        self.gathering.append(cid)
        self.gathered_bytes += pending.size
        self.oldest = self.oldest or time.monotonic()
        self._wake.set()

    def _forget(self, cid: str, future: asyncio.Future[dict[str, Any]]) -> None:
        """A caller gave up (its record was revoked or the worker stops): drop what nobody waits for."""
        pending = self.pending.get(cid)
        if pending is None:
            return
        with contextlib.suppress(ValueError):
            pending.futures.remove(future)
        if not pending.futures and pending.local_id is None and cid in self.gathering:
            self.gathering.remove(cid)
            self.gathered_bytes -= pending.size
            del self.pending[cid]

    # Background work ----------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._resume())
        await asyncio.shield(self._started)

    async def _resume(self) -> None:
        """Re-attach to this stage's batches that are not collected yet, then start gathering and polling."""
        for row in self.records.batches(self.stage, open_only=True):
            if row.endpoint != self.endpoint or row.model != self.settings.model:
                continue
            provider_id = row.provider_id
            if provider_id is None and row.owner_pid != os.getpid() and process_alive(row.owner_pid, row.owner_host):
                self.live[row.local_id] = None  # another worker is submitting it right now: its records will say
                continue
            if provider_id is None:
                if (provider_id := await self._found_or_unsent(row.local_id)) is None:
                    continue
            self.live[row.local_id] = provider_id
            log.info("stage %s: re-attached to batch %s (%s, %d requests)", self.stage, provider_id, row.state,
                     row.requests)
        self._tasks = [asyncio.create_task(self._gather_loop(), name=f"{self.stage}-batch-gather"),
                       asyncio.create_task(self._poll_loop(), name=f"{self.stage}-batch-poll")]

    async def _found_or_unsent(self, local_id: str) -> str | None:
        """The provider id of a batch whose worker stopped before recording it: found by its metadata, or
        recorded as never sent (nothing paid, nothing to wait for; None is returned)."""
        provider_id = await self._find_created(local_id)
        if provider_id is None:
            self.records.collect(local_id, [(cid, "unsent", None, "never submitted")
                                            for cid in self.records.custom_ids(local_id)],
                                 state=UNSENT, error="not submitted (the worker stopped first)")
        else:
            self.records.update(local_id, provider_id=provider_id)
        await self._flush(local_id)
        return provider_id

    async def _flush(self, local_id: str) -> bool:
        """The changes recorded so far onto the broker; False (and a warning) when it does not take them."""
        try:
            await self.records.flush()
            return True
        except Exception as exc:  # noqa: BLE001 - kept queued: produced with the next change
            log.warning("stage %s: batch %s: records not on the broker yet (%s: %s)", self.stage, local_id,
                        type(exc).__name__, exc)
            return False

    async def _find_created(self, local_id: str) -> str | None:
        """The provider's id of a batch created just before a crash (found by our id in its metadata)."""
        try:
            async for batch in self.http.batches.list(limit=100):
                if (batch.metadata or {}).get(METADATA_KEY) == local_id:
                    return str(batch.id)
        except Exception as exc:  # noqa: BLE001 - cannot tell: keep it open and look again at the next start
            log.warning("stage %s: could not list batches to find %s: %s", self.stage, local_id, exc)
            raise LLMUnavailableError(f"batch lane: cannot list the provider's batches: {exc}") from None
        return None

    async def _gather_loop(self) -> None:
        s = self.settings
        while True:
            timeout = None if self.oldest is None else max(0.0, self.oldest + s.batch_max_age - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            while self.gathering and (len(self.gathering) >= s.batch_max_requests
                                      or self.gathered_bytes >= s.batch_max_bytes
                                      or time.monotonic() - (self.oldest or 0) >= s.batch_max_age):
                await self._submit(self._take())

    def _take(self) -> list[str]:
        s = self.settings
        taken, size = [], 0
        while self.gathering and len(taken) < s.batch_max_requests:
            cid = self.gathering[0]
            if taken and size + self.pending[cid].size > s.batch_max_bytes:
                break
            taken.append(self.gathering.pop(0))
            size += self.pending[cid].size
        self.gathered_bytes -= size
        self.oldest = time.monotonic() if self.gathering else None
        return taken

    async def _submit(self, cids: list[str]) -> None:
        cids = await self._not_submitted_elsewhere(cids)
        if not cids:
            return
        lines = b"".join(orjson.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT,
                                       "body": self.pending[cid].body}) + b"\n" for cid in cids)
        now = time.time()
        local_id = uuid.uuid4().hex
        self.records.add(BatchRow(local_id, self.stage, self.endpoint, self.settings.model, None, SUBMITTING, now, now,
                                  len(cids), len(lines), 0, 0, False, 0.0, 0, 0, None), cids)
        for cid in cids:
            self.pending[cid].local_id = local_id
        if not await self._flush(local_id):  # not uploaded unless every worker can learn of it
            self.records.collect(local_id, [(cid, "unsent", None, "not recorded on the broker") for cid in cids],
                                 state=UNSENT, error="not submitted: its record was not taken by the broker")
            self._settle(local_id, {}, {cid: ("error", "batch not submitted: its record was not taken by the broker")
                                        for cid in cids}, UNSENT)
            return
        last = ""
        for retry in range(self.settings.max_retries + 1):
            if retry:
                await asyncio.sleep(jittered_backoff(retry))
            try:
                uploaded = await self.http.files.create(file=(f"{self.stage}-{local_id}.jsonl", lines),
                                                        purpose="batch")
                batch = await self.http.batches.create(
                    input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                    metadata={METADATA_KEY: local_id, "stage": self.stage})
            except Exception as exc:  # noqa: BLE001 - retried, then every request in it fails
                last = f"{type(exc).__name__}: {exc}"[:300]
                continue
            self.records.update(local_id, provider_id=batch.id, state=batch.status)
            self.live[local_id] = batch.id
            await self._flush(local_id)
            metrics.LLM_BATCHES.labels(self.stage, "submitted").inc()
            log.info("stage %s: submitted batch %s (%d requests, %d bytes)", self.stage, batch.id, len(cids),
                     len(lines))
            return
        self.records.collect(local_id, [(cid, "unsent", None, last) for cid in cids], state="failed",
                             error=f"not submitted: {last}")
        await self._flush(local_id)
        self._settle(local_id, {}, {cid: ("error", f"batch not submitted: {last}") for cid in cids}, "failed")

    async def _not_submitted_elsewhere(self, cids: list[str]) -> list[str]:
        """Of the gathered requests, those no batch holds: the records read up to the topic's end first, so
        a request another worker (another machine) put into a batch waits for that batch instead."""
        try:
            await self.records.sync()
        except Exception as exc:  # noqa: BLE001 - the broker away: recording the batch will fail and say so
            log.warning("stage %s: batch records not read up to their end (%s: %s)", self.stage,
                        type(exc).__name__, exc)
            return cids
        fresh = []
        for cid in cids:
            if cid not in self.pending:
                continue
            try:
                done, open_batch = self._known(cid)
            except BatchCancelledError as exc:
                self._fail(cid, exc)
                continue
            if done is not None:
                self._resolve(cid, done)
            elif open_batch is not None:
                self.pending[cid].local_id = open_batch
                self.live.setdefault(open_batch, None)
                log.info("stage %s: request %s is in batch %s already: waiting for it", self.stage, cid, open_batch)
            else:
                fresh.append(cid)
        return fresh

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.batch_poll_interval)
            for local_id, provider_id in list(self.live.items()):
                try:
                    await self._poll(local_id, provider_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the provider may be away a while: ask again later
                    log.warning("stage %s: polling batch %s failed: %s", self.stage, provider_id or local_id, exc)

    async def _poll(self, local_id: str, provider_id: str | None) -> None:
        if provider_id is None:  # submitted by another process: its provider id is recorded once it has one
            if (row := self.records.batch(local_id)) is None:
                return
            if row.collected:
                return self._settle_from_records(local_id)
            if (provider_id := row.provider_id) is None:
                if not self._submitter_gone(row):
                    return
                if (provider_id := await self._found_or_unsent(local_id)) is None:
                    return self._regather(local_id)
            self.awaited.pop(local_id, None)
            self.live[local_id] = provider_id
        batch = await self.http.batches.retrieve(provider_id)
        counts = batch.request_counts
        if batch.status not in TERMINAL:
            self.records.update(local_id, state=batch.status, completed=counts.completed if counts else 0,
                                failed=counts.failed if counts else 0)
            return
        row = self.records.batch(local_id)
        if row is not None and row.collected:  # collected by another process meanwhile
            return self._settle_from_records(local_id)
        await self._collect(local_id, batch)

    async def _collect(self, local_id: str, batch: Any) -> None:
        answers: dict[str, dict[str, Any]] = {}
        failures: dict[str, tuple[str, str]] = {}
        for line in await self._lines(batch.output_file_id) + await self._lines(batch.error_file_id):
            cid = line.get("custom_id")
            response = line.get("response") or {}
            if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                answers[cid] = response["body"]
            else:
                failures[cid] = _failure(line)
        for cid in self.records.custom_ids(local_id):
            if cid not in answers and cid not in failures:
                reason = _batch_errors(batch) if batch.status == "failed" else "missing from the batch's files"
                failures[cid] = ("error", f"batch {batch.id} {batch.status}: {reason}")
        prompt = sum(int((a.get("usage") or {}).get("prompt_tokens") or 0) for a in answers.values())
        completion = sum(int((a.get("usage") or {}).get("completion_tokens") or 0) for a in answers.values())
        cost = self.prices.cost(prompt, completion, "batch", self.settings.model,
                                str(next(iter(answers.values()), {}).get("model") or ""))
        outcomes = [(cid, "ok", orjson.dumps(body), None) for cid, body in answers.items()]
        outcomes += [(cid, kind, None, text) for cid, (kind, text) in failures.items()]
        self.records.collect(local_id, outcomes, state=batch.status, completed=len(answers), failed=len(failures),
                             cost_usd=cost, prompt_tokens=prompt, completion_tokens=completion,
                             error=_batch_errors(batch) if batch.status == "failed" else None)
        await self._flush(local_id)
        metrics.LLM_COST.labels(self.stage, self.endpoint, self.settings.model, "batch").inc(cost)
        metrics.LLM_BATCHES.labels(self.stage, batch.status).inc()
        log.info("stage %s: batch %s %s: %d answered, %d failed, $%.4f", self.stage, batch.id, batch.status,
                 len(answers), len(failures), cost)
        self._settle(local_id, answers, failures, batch.status)

    def _submitter_gone(self, row: BatchRow) -> bool:
        """Whether the worker submitting this batch is gone without recording its provider id: dead on this
        machine, or, on another, silent for longer than a submission can take."""
        if row.owner_pid == os.getpid():
            return False  # this worker's own, on its way
        if row.owner_host == socket.gethostname():
            return not process_alive(row.owner_pid)
        since = self.awaited.setdefault(row.local_id, time.monotonic())
        s = self.settings
        return time.monotonic() - since > (2 * s.timeout + 30) * (s.max_retries + 1)

    def _regather(self, local_id: str) -> None:
        """A batch never sent: the requests that waited for it go into a batch of this worker."""
        self.live.pop(local_id, None)
        self.awaited.pop(local_id, None)
        for cid, pending in self.pending.items():
            if pending.local_id == local_id:
                self._gather(cid)

    def _settle_from_records(self, local_id: str) -> None:
        answers, failures = {}, {}
        for cid, outcome, result, error in self.records.outcomes(local_id):
            if outcome == "ok" and result is not None:
                answers[cid] = orjson.loads(result)
            else:
                failures[cid] = (outcome or "error", error or "no result")
        row = self.records.batch(local_id)
        self._settle(local_id, answers, failures, row.state if row is not None else "completed")

    def _settle(self, local_id: str, answers: dict[str, dict[str, Any]], failures: dict[str, tuple[str, str]],
                status: str) -> None:
        """Wake the callers waiting on this batch: answers, failures, and expired requests into the next batch."""
        self.live.pop(local_id, None)
        for cid, pending in list(self.pending.items()):
            if pending.local_id != local_id:
                continue
            if cid in answers:
                self._resolve(cid, answers[cid])
                continue
            kind, text = failures.get(cid, ("error", "no result"))
            if kind == "expired" and pending.expired_resubmits < EXPIRED_RESUBMITS:
                pending.expired_resubmits += 1
                self._gather(cid)
                continue
            error = (BatchCancelledError(f"batch request cancelled: {text}") if kind == "cancelled"
                     else LLMUnavailableError(f"batch request failed: {text}"))
            self._fail(cid, error)

    def _resolve(self, cid: str, body: dict[str, Any]) -> None:
        for future in self.pending.pop(cid).futures:
            if not future.done():
                future.set_result(body)

    def _fail(self, cid: str, error: Exception) -> None:
        for future in self.pending.pop(cid).futures:
            if not future.done():
                future.set_exception(error)

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self.http.files.content(file_id)
        out = []
        for raw in content.content.splitlines():
            with contextlib.suppress(ValueError):
                if isinstance(line := orjson.loads(raw), dict):
                    out.append(line)
        return out

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started is not None and not self._started.done():
            self._started.cancel()
            await asyncio.gather(self._started, return_exceptions=True)
        for cid in list(self.pending):
            self._fail(cid, LLMUnavailableError("the batch lane stopped"))


def _failure(line: dict[str, Any]) -> tuple[str, str]:
    """(kind, the provider's error text) of an error file line."""
    error = line.get("error") or {}
    code = error.get("code") if isinstance(error, dict) else None
    if code == "batch_expired":
        return "expired", str(error.get("message") or code)
    if code == "batch_cancelled":
        return "cancelled", str(error.get("message") or code)
    response = line.get("response") or {}
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    detail = body.get("error") if isinstance(body.get("error"), dict) else error if isinstance(error, dict) else {}
    message = str(detail.get("message") or detail or "no error text")[:1000]
    status = response.get("status_code")
    return "error", f"HTTP {status}: {message}" if status else message


def _batch_errors(batch: Any) -> str:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    return "; ".join(str(getattr(e, "message", e)) for e in data)[:1000] or "no error text"
