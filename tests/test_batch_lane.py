"""The batch lane in process: the LLM client in batch mode against the simulator's batch API, with durable
records in a file (a second pool on the same file is a restarted worker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

from streamer import metrics
from streamer.config import LLMSettings
from streamer.llm.batch import BatchRecords
from streamer.llm.client import LLMPool
from streamer.llm.results import LLMUnavailableError
from streamer.llm.simulator import SimulatorSettings, start_simulator
from streamer.llm.simulator.batch_settings import BatchBehaviour


class Verdict(BaseModel):
    analysis: str
    score: int = Field(ge=0, le=7)


class Sim:
    def __init__(self, base: str) -> None:
        self.base = base

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        async with aiohttp.ClientSession() as session, session.request(method, self.base + path, **kw) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def ledger(self) -> dict[str, Any]:
        return await self._call("GET", "/ledger")

    async def behave(self, **changes: Any) -> None:
        await self._call("POST", "/batch-behaviour", json=changes)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Sim]:
    runner, port = await start_simulator(SimulatorSettings(port=0, batch=BatchBehaviour(completion_seconds=0.4)))
    try:
        yield Sim(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def batch_llm(sim: Sim, **kw: Any) -> LLMSettings:
    return LLMSettings(**{"base_url": f"{sim.base}/v1", "model": "gpt-4o-mini", "mode": "batch", "cache": False,
                          "batch_max_requests": 40, "batch_max_age": 0.2, "batch_poll_interval": 0.1,
                          "max_retries": 1, **kw})


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Rate question {i}: how do consumer groups share partitions?"}]


def charged_keys(ledger: dict[str, Any]) -> list[str]:
    return [c["key"] for c in ledger["charges"] if c["lane"] == "batch"]


async def test_calls_go_out_in_batches_answered_once_each_at_half_price(sim: Sim, tmp_path: Path) -> None:
    pool = LLMPool(batches=BatchRecords(tmp_path / "batches.sqlite"))
    client = pool.client(batch_llm(sim), "t-batch-cost")
    try:
        results = await asyncio.gather(*(client.structured(question(i), Verdict) for i in range(100)))
    finally:
        await pool.close()
    assert all(isinstance(r.parsed, Verdict) for r in results)
    ledger = await sim.ledger()
    keys = charged_keys(ledger)
    assert len(keys) == 100 and len(set(keys)) == 100 and "online" not in ledger["totals"]
    batches = {c["batch_id"] for c in ledger["charges"]}
    assert len(batches) >= 3  # at most 40 requests per batch
    t = ledger["totals"]["batch"]
    expected = (t["prompt_tokens"] * 0.15 + t["completion_tokens"] * 0.60) / 1e6 * 0.5
    assert metrics.total(metrics.LLM_COST, stage="t-batch-cost", lane="batch") == pytest.approx(expected, rel=1e-9)
    rows = BatchRecords(tmp_path / "batches.sqlite").batches("t-batch-cost")
    assert sum(r.completed for r in rows) == 100 and all(r.collected and r.state == "completed" for r in rows)
    assert sum(r.cost_usd for r in rows) == pytest.approx(expected, rel=1e-9)


async def die_with_batches_out(sim: Sim, path: Path, stage: str, calls: int, more_out: float = 0.0) -> None:
    """A worker that asks `calls` questions in batch mode and dies once a batch is submitted (after
    `more_out` seconds more): its callers are gone, its batches go on at the provider."""
    pool = LLMPool(batches=BatchRecords(path))
    client = pool.client(batch_llm(sim), stage)
    asked = [asyncio.ensure_future(client.structured(question(i), Verdict)) for i in range(calls)]
    deadline = asyncio.get_running_loop().time() + 10
    while not any(r.provider_id for r in BatchRecords(path).batches(stage)):
        assert asyncio.get_running_loop().time() < deadline, "no batch submitted"
        await asyncio.sleep(0.02)
    await asyncio.sleep(more_out)
    for call in asked:
        call.cancel()
    await asyncio.gather(*asked, return_exceptions=True)
    await pool.close()


async def test_a_restarted_worker_re_attaches_to_its_batches_and_pays_nothing_twice(sim: Sim, tmp_path: Path) -> None:
    await sim.behave(completion_seconds=2.0)
    path = tmp_path / "batches.sqlite"
    await die_with_batches_out(sim, path, "t-batch-restart", 60, more_out=0.3)
    submitted = [r for r in BatchRecords(path).batches("t-batch-restart") if r.provider_id]
    assert submitted and not all(r.collected for r in submitted)

    second = LLMPool(batches=BatchRecords(path))
    client = second.client(batch_llm(sim), "t-batch-restart")
    try:
        results = await asyncio.gather(*(client.structured(question(i), Verdict) for i in range(60)))
    finally:
        await second.close()
    assert all(isinstance(r.parsed, Verdict) for r in results)
    keys = charged_keys(await sim.ledger())
    assert len(set(keys)) == 60 and len(keys) == 60  # nothing charged twice
    rows = BatchRecords(path).batches("t-batch-restart")
    assert {r.local_id for r in submitted} <= {r.local_id for r in rows}
    assert sum(r.completed for r in rows) == 60


async def test_expired_batch_and_failed_requests_are_resubmitted_and_errors_carry_the_providers_text(
        sim: Sim, tmp_path: Path) -> None:
    await sim.behave(expire_next=1, expire_keep=0.5, failure_rate=0.1, seed=7)
    pool = LLMPool(batches=BatchRecords(tmp_path / "batches.sqlite"))
    client = pool.client(batch_llm(sim, batch_max_requests=200), "t-batch-faults")
    try:
        first = await asyncio.gather(*(client.structured(question(i), Verdict) for i in range(100)),
                                     return_exceptions=True)
        failed = [i for i, r in enumerate(first) if isinstance(r, Exception)]
        assert all(isinstance(first[i], LLMUnavailableError) for i in failed)
        assert failed and all("simulated batch request failure" in str(first[i]) for i in failed)
        assert all("HTTP 500" in str(first[i]) for i in failed)
        await sim.behave(failure_rate=0.0)
        again = await asyncio.gather(*(client.structured(question(i), Verdict) for i in failed))
    finally:
        await pool.close()
    assert all(isinstance(r.parsed, Verdict) for r in again)
    rows = BatchRecords(tmp_path / "batches.sqlite").batches("t-batch-faults")
    states = [r.state for r in rows]
    assert states[0] == "expired" and "completed" in states
    expired = rows[0]  # half of it finished before it expired (about a tenth of those failed): kept, not asked again
    assert expired.completed + expired.failed == 100 and 35 <= expired.completed <= 50
    ledger = await sim.ledger()
    assert len([c for c in ledger["charges"] if c["batch_id"] == expired.provider_id]) == expired.completed
    keys = charged_keys(ledger)
    assert len(keys) == len(set(keys)) == 100  # every request charged once, expiry and failures included


async def test_a_batch_created_just_before_a_crash_is_found_by_its_metadata(sim: Sim, tmp_path: Path) -> None:
    await sim.behave(completion_seconds=1.5)
    path = tmp_path / "batches.sqlite"
    await die_with_batches_out(sim, path, "t-batch-found", 10)
    # As if the worker died between creating the batch and recording its id.
    records = BatchRecords(path)
    (row,) = records.batches("t-batch-found")
    records.update(row.local_id, provider_id=None, state="submitting", owner_pid=0)
    records.close()

    second = LLMPool(batches=BatchRecords(path))
    client = second.client(batch_llm(sim), "t-batch-found")
    try:
        results = await asyncio.gather(*(client.structured(question(i), Verdict) for i in range(10)))
    finally:
        await second.close()
    assert all(isinstance(r.parsed, Verdict) for r in results)
    (found,) = BatchRecords(path).batches("t-batch-found")
    assert found.local_id == row.local_id and found.provider_id == row.provider_id and found.collected
    keys = charged_keys(await sim.ledger())
    assert len(keys) == len(set(keys)) == 10


async def test_a_stage_under_a_new_version_asks_again_instead_of_taking_the_old_answers(sim: Sim, tmp_path: Path) -> None:
    pool = LLMPool(batches=BatchRecords(tmp_path / "batches.sqlite"))
    try:
        plain = pool.client(batch_llm(sim), "t-batch-scope")
        versioned = pool.client(batch_llm(sim), "t-batch-scope", cache_scope="hot")
        await asyncio.gather(*(plain.structured(question(i), Verdict) for i in range(5)))
        await asyncio.gather(*(plain.structured(question(i), Verdict) for i in range(5)))  # recorded: not asked
        await asyncio.gather(*(versioned.structured(question(i), Verdict) for i in range(5)))
    finally:
        await pool.close()
    keys = charged_keys(await sim.ledger())
    assert len(keys) == len(set(keys)) == 10
