"""The batch lane's records on the broker (streamer.state.batch_log): two machines' indexes (SQLite files in
different data dirs) kept in step through the compacted `batches` topic of the real broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from consumers import TOPICS
from streamer.kafka.clients import ensure_topics, make_producer
from streamer.llm.batch import BatchRecords, BatchRow
from streamer.state.batch_log import BatchLog


async def machine(settings: Any, path: Path) -> tuple[BatchRecords, BatchLog, Any]:
    records = BatchRecords(path)
    producer = make_producer(settings.kafka)
    await producer.start()
    records.log = BatchLog(settings, records, producer)
    await records.log.start()
    return records, records.log, producer


async def stop(*machines: tuple[BatchRecords, BatchLog, Any]) -> None:
    for records, log, producer in machines:
        await log.stop()
        await producer.stop()
        records.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def new_batch(local_id: str) -> BatchRow:
    now = time.time()
    return BatchRow(local_id, "judge", "http://sim/v1", "gpt-4o-mini", None, "submitting", now, now, 2, 100, 0, 0,
                    False, 0.0, 0, 0, None)


async def test_a_batch_recorded_on_one_machine_is_found_on_another_with_its_outcomes(pipeline, tmp_path: Path):
    settings = pipeline.settings()
    await ensure_topics(settings, TOPICS)
    a = await machine(settings, tmp_path / "a" / "batches.sqlite")
    b = await machine(settings, tmp_path / "b" / "batches.sqlite")
    try:
        records_a, records_b = a[0], b[0]
        records_a.add(new_batch("one"), ["ss-1", "ss-2"])
        await records_a.flush()  # what the lane waits for before uploading the file
        await b[1].sync()  # what the lane of the other machine does before submitting a batch
        (seen,) = records_b.batches()
        assert seen.local_id == "one" and seen.provider_id is None and not seen.collected
        assert [h[0] for h in records_b.history("ss-1")] == ["one"]  # the request is in an open batch there

        records_a.update("one", provider_id="batch_x", state="in_progress")
        records_a.collect("one", [("ss-1", "ok", b'{"choices": []}', None), ("ss-2", "error", None, "HTTP 500: no")],
                          state="completed", completed=1, failed=1, cost_usd=0.25)
        await records_a.flush()
        await until(lambda: bool(records_b.batches()[0].collected), "the collected batch on machine b")
        row = records_b.batch("one")
        assert row is not None and row.provider_id == "batch_x" and row.cost_usd == 0.25 and row.version == 2
        assert records_b.history("ss-1")[0][1:3] == ("ok", b'{"choices": []}')
        assert records_b.history("ss-2")[0][1] == "error" and records_b.history("ss-2")[0][3] == "HTTP 500: no"

        # Changes arrive again, and out of order (a worker reads its own back): an older one changes nothing.
        stale = new_batch("one").as_dict()
        records_b.apply_batch(stale)
        records_b.apply_request("ss-1", "one", None, None, None)
        assert records_b.batch("one").provider_id == "batch_x" and records_b.batch("one").collected
        assert records_b.history("ss-1")[0][1] == "ok"
        assert records_a.batch("one").version == 2  # machine a's index was not moved back by its own changes
    finally:
        await stop(a, b)


async def test_open_batches_missing_from_the_topic_are_produced_again_at_start(pipeline, tmp_path: Path):
    """A broker that came back empty: the machine that holds an open batch in its index puts it back."""
    settings = pipeline.settings()
    await ensure_topics(settings, TOPICS)
    kept = BatchRecords(tmp_path / "a" / "batches.sqlite")  # written with no broker to take it
    kept.add(new_batch("open"), ["ss-9"])
    kept.update("open", provider_id="batch_y", state="in_progress")
    kept.add(new_batch("done"), ["ss-8"])
    kept.collect("done", [("ss-8", "ok", b"{}", None)], state="completed", completed=1)
    kept.close()
    a = await machine(settings, tmp_path / "a" / "batches.sqlite")
    b = await machine(settings, tmp_path / "b" / "batches.sqlite")
    try:
        assert [(r.local_id, r.provider_id) for r in b[0].batches()] == [("open", "batch_y")]
        assert [h[0] for h in b[0].history("ss-9")] == ["open"]
    finally:
        await stop(a, b)
