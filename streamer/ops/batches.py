"""`synthstream batch list|cancel`: the batch lane's batches, from the durable records (the broker's
`batches` topic, over the data dir's copy: streamer.llm.batch, streamer.state.batch_log), their open ones
refreshed from the provider; cancelling asks the provider."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from streamer.config import LLMSettings, Settings
from streamer.ops.units import duration
from streamer.llm.batch import TERMINAL, BatchRecords, BatchRow, records_path
from streamer.state.batch_log import read_batch_records

log = logging.getLogger(__name__)

TOPIC_TIMEOUT = 30.0  # seconds to read the batch records from the broker


class UnknownBatchError(Exception):
    """An id that names no batch of the records, or more than one."""


@dataclass
class BatchView:
    row: BatchRow
    live: dict[str, Any] | None = None  # the provider's view of an open batch, when asked
    problem: str | None = None  # why the provider could not be asked

    @property
    def state(self) -> str:
        return str(self.live["status"]) if self.live else self.row.state

    @property
    def name(self) -> str:
        return self.row.provider_id or f"(local {self.row.local_id[:12]})"

    def to_json(self) -> dict[str, Any]:
        counts = (self.live or {}).get("request_counts") or {}
        return {"batch": self.row.provider_id, "local_id": self.row.local_id, "stage": self.row.stage,
                "state": self.state, "collected": self.row.collected, "requests": self.row.requests,
                "completed": counts.get("completed", self.row.completed), "failed": counts.get("failed", self.row.failed),
                "bytes": self.row.bytes, "created": self.row.created, "age_s": round(time.time() - self.row.created, 1),
                "cost_usd": round(self.row.cost_usd, 6), "prompt_tokens": self.row.prompt_tokens,
                "completion_tokens": self.row.completion_tokens, "endpoint": self.row.endpoint,
                "model": self.row.model, "error": self.row.error or self.problem}


def stage_llm(settings: Settings, stage: str) -> LLMSettings:
    from consumers import STAGES

    if stage in STAGES:
        return STAGES[stage].bind(settings).settings.llm
    return settings.llm


def load(settings: Settings, *, stage: str | None = None, open_only: bool = False) -> list[BatchView]:
    """The batches of every worker: the broker's `batches` topic over this machine's records (the data dir's
    cache), or those records alone when no broker is configured or it does not answer."""
    path = records_path(settings.storage.data_dir, settings.kafka.topic_prefix)
    records = BatchRecords(path if path.exists() else ":memory:")
    try:
        if settings.kafka.bootstrap_servers:
            try:
                asyncio.run(asyncio.wait_for(read_batch_records(settings, records), TOPIC_TIMEOUT))
            except Exception as exc:  # noqa: BLE001 - the records of this machine are still worth showing
                log.warning("batch records not read from the broker (%s: %s): showing this machine's only",
                            type(exc).__name__, exc)
        return [BatchView(row) for row in records.batches(stage, open_only=open_only)]
    finally:
        records.close()


def select(views: list[BatchView], ids: list[str]) -> list[BatchView]:
    """The batches named by provider id or local id (a unique prefix is enough)."""
    chosen = []
    for wanted in ids:
        found = [v for v in views if (v.row.provider_id or "").startswith(wanted) or v.row.local_id.startswith(wanted)]
        if len(found) != 1:
            raise UnknownBatchError(f"{wanted!r} names {'no' if not found else len(found)} batches of the records"
                                    + ("" if not found else ": give more of the id"))
        chosen.append(found[0])
    return chosen


async def refresh(settings: Settings, views: list[BatchView]) -> None:
    """Ask the provider for the open batches' state and counts (ones collected are final already)."""
    clients: dict[tuple[str | None, str], Any] = {}
    try:
        for view in views:
            if view.row.collected or view.row.provider_id is None:
                continue
            try:
                client = _client(settings, view.row.stage, clients)
                view.live = (await client.batches.retrieve(view.row.provider_id)).model_dump(mode="json")
            except Exception as exc:  # noqa: BLE001 - shown beside the batch; the records still say what we know
                view.problem = f"provider not asked: {type(exc).__name__}: {exc}"[:300]
    finally:
        for client in clients.values():
            await client.close()


async def cancel(settings: Settings, views: list[BatchView]) -> list[tuple[BatchView, str]]:
    """Cancel each open batch at the provider; (batch, what happened) for each."""
    clients: dict[tuple[str | None, str], Any] = {}
    out = []
    try:
        for view in views:
            if view.row.collected or view.state in TERMINAL:
                out.append((view, f"not cancelled: already {view.state}"))
                continue
            if view.row.provider_id is None:
                out.append((view, "not cancelled: not submitted yet (no provider id)"))
                continue
            try:
                batch = await _client(settings, view.row.stage, clients).batches.cancel(view.row.provider_id)
            except Exception as exc:  # noqa: BLE001 - said per batch; the others are still cancelled
                out.append((view, f"not cancelled: {type(exc).__name__}: {exc}"[:300]))
                continue
            out.append((view, f"{batch.status}: its unfinished requests are dead-lettered by the stage's worker"))
    finally:
        for client in clients.values():
            await client.close()
    return out


def _client(settings: Settings, stage: str, clients: dict[tuple[str | None, str], Any]) -> Any:
    import openai

    llm = stage_llm(settings, stage)
    key = (llm.base_url, llm.resolved_api_key())
    if key not in clients:
        clients[key] = openai.AsyncOpenAI(base_url=llm.base_url, api_key=key[1], max_retries=1, timeout=llm.timeout)
    return clients[key]


COLUMNS = ("batch", "stage", "state", "requests", "done", "failed", "age", "cost")


def table_lines(views: list[BatchView]) -> list[str]:
    cells = [COLUMNS]
    for view in views:
        j = view.to_json()
        cells.append((view.name, j["stage"], j["state"], str(j["requests"]), str(j["completed"]), str(j["failed"]),
                      duration(j["age_s"]), f"${j['cost_usd']:.4f}" if view.row.collected else "-"))
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines += [f"{v.name}: {v.problem or v.row.error}" for v in views if v.problem or v.row.error]
    return lines


