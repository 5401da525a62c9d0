"""The simulator's batch API and ledger, over real HTTP with the OpenAI SDK's own files and batches calls."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any, AsyncIterator

import aiohttp
import openai
import pytest
import pytest_asyncio

from streamer.llm.simulator import SimulatorSettings, start_simulator
from streamer.llm.simulator.batch_settings import BatchBehaviour


def _request(custom_id: str, text: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 200}}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class Sim:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return await response.json()

    async def behave(self, **changes: Any) -> None:
        async with aiohttp.ClientSession() as session, session.post(self.base + "/batch-behaviour",
                                                                    json=changes) as response:
            assert response.status == 200, await response.text()

    async def submit(self, lines: list[dict[str, Any]]) -> Any:
        uploaded = await self.client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
        return await self.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h", metadata={"owner": "test"})

    async def wait(self, batch_id: str, timeout: float = 10.0) -> Any:
        states = []
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await self.client.batches.retrieve(batch_id)
            if not states or states[-1] != batch.status:
                states.append(batch.status)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                batch.seen_states = states  # type: ignore[attr-defined]
                return batch
            await asyncio.sleep(0.02)
        raise AssertionError(f"batch {batch_id} not finished in {timeout}s: {states}")

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        content = await self.client.files.content(file_id)
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Sim]:
    runner, port = await start_simulator(SimulatorSettings(port=0, batch=BatchBehaviour(completion_seconds=0.5)))
    s = Sim(f"http://127.0.0.1:{port}")
    try:
        yield s
    finally:
        await s.client.close()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_a_batch_goes_through_its_states_and_answers_by_custom_id_as_online(sim: Sim) -> None:
    texts = {f"r{i}": f"Explain consumer group number {i} and its partitions in Kafka." for i in range(30)}
    batch = await sim.submit([_request(cid, text) for cid, text in texts.items()])
    assert batch.status == "validating" and batch.metadata == {"owner": "test"}
    done = await sim.wait(batch.id)
    assert done.status == "completed"
    assert done.seen_states[0] == "validating" and "in_progress" in done.seen_states  # type: ignore[attr-defined]
    assert done.request_counts.total == 30 and done.request_counts.completed == 30 and done.request_counts.failed == 0
    assert done.error_file_id is None
    out = await sim.lines(done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(texts)
    # The same request online gets the same answer (the content is deterministic per request).
    one = next(line for line in out if line["custom_id"] == "r7")
    online = await sim.client.chat.completions.create(**_request("r7", texts["r7"])["body"])
    assert one["response"]["status_code"] == 200
    assert one["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    ledger = await sim.get("/ledger")
    batch_charges = [c for c in ledger["charges"] if c["lane"] == "batch"]
    assert sorted(c["key"] for c in batch_charges) == sorted(texts)
    assert {c["batch_id"] for c in batch_charges} == {batch.id}
    assert ledger["totals"]["online"]["requests"] == 1
    assert ledger["totals"]["batch"]["prompt_tokens"] == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in out)
    listed = await sim.client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch.id]


@pytest.mark.asyncio
async def test_failed_requests_go_to_the_error_file_uncharged(sim: Sim) -> None:
    await sim.behave(failure_rate=0.1, seed=3)
    batch = await sim.submit([_request(f"r{i}", f"Question {i} about log compaction.") for i in range(200)])
    done = await sim.wait(batch.id)
    assert done.status == "completed"
    out, errors = await sim.lines(done.output_file_id), await sim.lines(done.error_file_id)
    assert 8 <= len(errors) <= 35, len(errors)  # about 10% of 200
    assert len(out) + len(errors) == 200 and done.request_counts.failed == len(errors)
    assert all(e["response"]["status_code"] == 500 and "simulated batch request failure" in
               e["response"]["body"]["error"]["message"] for e in errors)
    charged = {c["key"] for c in (await sim.get("/ledger"))["charges"]}
    assert charged == {line["custom_id"] for line in out}


@pytest.mark.asyncio
async def test_an_expired_batch_keeps_what_it_finished(sim: Sim) -> None:
    await sim.behave(expire_next=1, expire_keep=0.4)
    batch = await sim.submit([_request(f"r{i}", f"Question {i} about replication.") for i in range(50)])
    done = await sim.wait(batch.id)
    assert done.status == "expired" and done.expired_at is not None
    out, errors = await sim.lines(done.output_file_id), await sim.lines(done.error_file_id)
    assert len(out) == 20 and len(errors) == 30
    assert all(e["error"]["code"] == "batch_expired" for e in errors)
    again = await sim.wait((await sim.submit([_request("x", "Is the next batch fine?")])).id)
    assert again.status == "completed"  # expire_next counted down


@pytest.mark.asyncio
async def test_cancel_and_invalid_input(sim: Sim) -> None:
    await sim.behave(completion_seconds=3.0)
    batch = await sim.submit([_request(f"r{i}", f"Question {i} about offsets.") for i in range(100)])
    await asyncio.sleep(0.5)
    cancelling = await sim.client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = await sim.wait(batch.id)
    assert done.status == "cancelled"
    out, errors = await sim.lines(done.output_file_id), await sim.lines(done.error_file_id)
    assert len(out) + len(errors) == 100 and len(errors) > 0
    assert all(e["error"]["code"] == "batch_cancelled" for e in errors)
    with pytest.raises(openai.ConflictError):
        await sim.client.batches.cancel(batch.id)
    await sim.behave(completion_seconds=0.2)
    dup = await sim.wait((await sim.submit([_request("same", "a"), _request("same", "b")])).id)
    assert dup.status == "failed" and "duplicate custom_id" in dup.errors.data[0].message
    with pytest.raises(openai.BadRequestError):
        await sim.client.batches.create(input_file_id="file-none", endpoint="/v1/chat/completions",
                                        completion_window="24h")
