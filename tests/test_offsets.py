import asyncio
import logging

import pytest

from consumers import TOPICS
from helpers import ENGINES
from streamer.kafka.offsets import PartitionOffsets


def test_commit_point_is_end_of_contiguous_finished_prefix():
    p = PartitionOffsets()
    for offset in range(10, 15):
        p.started(offset)
    assert p.to_commit() is None
    p.finished(12)
    p.finished(11)
    assert p.to_commit() is None, "10 is still in flight"
    p.finished(10)
    assert p.to_commit() == 13
    p.committed = 13
    assert p.to_commit() is None
    p.finished(14)
    assert p.to_commit() is None, "13 is still in flight: nothing new to commit"
    p.finished(13)
    assert p.to_commit() == 15 and p.in_flight == 0


def test_gaps_in_offsets_do_not_block_progress():
    # Compacted topics and transaction markers leave holes; only started offsets count.
    p = PartitionOffsets()
    for offset in (3, 7, 8):
        p.started(offset)
    p.finished(8)
    p.finished(3)
    assert p.to_commit() == 4
    p.finished(7)
    assert p.to_commit() == 9


async def test_records_of_a_partition_still_preparing_are_held_back_in_order():
    """The consumer keeps fetching while a partition's preparation (a state restore) awaits; its
    records must start only afterwards, in offset order, and be dropped if it is revoked first."""
    from aiokafka import TopicPartition

    from streamer.config import Settings
    from streamer.kafka.group import GroupMember

    member = GroupMember("m", Settings(), ["t"], "g")
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    member.consumer.assign([a, b])  # as the group would; never started: this is bookkeeping only
    member._assigned({a, b})  # noqa: SLF001 - the rebalance callback's first step
    assert member.consumer.paused() == {a, b}
    assert member.take_ready({a: [1, 2], b: [10]}) == {}
    member.preparing.discard(b)  # b has finished preparing
    member.set_paused(False)
    assert member.consumer.paused() == {a}
    assert member.take_ready({a: [3], b: [11]}) == {b: [10, 11]}
    member.preparing.discard(a)
    assert member.take_ready({a: [4]}) == {a: [1, 2, 3, 4]}
    member._assigned({a})
    member.take_ready({a: [5]})
    await member._revoked({a})  # noqa: SLF001 - revoked before it was ready: nothing starts
    assert member.take_ready({}) == {} and a not in member.held
    await member.consumer.stop()


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
async def test_a_wake_or_a_stop_ends_a_polls_wait_and_a_stop_ends_lag_reads_without_an_error(pipeline, caplog):
    """A member's stop must not wait out its poll's timeout (the exit of `run --until-idle` waits
    for the slowest member), nor must the sink told to write now (a wake); a record the cut-short
    wait fetches later is the next poll's. A lag read under way when the stop closes the consumer
    must end quietly: an OffsetFetch cut short by the closing connection is an ERROR in aiokafka's
    log, and the coordinator it marks dead is looked for again before leaving."""
    from streamer.kafka.clients import ensure_topics, make_producer
    from streamer.kafka.group import GroupMember

    settings = pipeline.settings()
    await ensure_topics(settings, TOPICS)
    stop = asyncio.Event()
    member = GroupMember("m", settings, [pipeline.prefix + "docs"], pipeline.prefix + "offsets-test", stop=stop)
    await member.start()
    try:
        async with asyncio.timeout(60):
            while not member.joined or member.preparing:
                assert await member.poll(10, timeout_ms=100) == {}
        member.set_paused(False)  # prepared: fetched from now on
        lags: list[int | None] = []

        async def read_lag_as_the_worker_does() -> None:
            while member.active:
                lags.append(await member.lag())

        waiting = asyncio.create_task(member.poll(10, timeout_ms=60_000))
        await asyncio.sleep(0.5)
        member.wake()
        assert await asyncio.wait_for(waiting, 10) == {}
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(pipeline.prefix + "docs", b"one record", key=b"k")
        finally:
            await producer.stop()
        async with asyncio.timeout(30):
            fetched = {}
            while not fetched:
                fetched = await member.poll(10, timeout_ms=1000)
        assert [r.value for records in fetched.values() for r in records] == [b"one record"]

        reading = asyncio.create_task(read_lag_as_the_worker_does())
        waiting = asyncio.create_task(member.poll(10, timeout_ms=60_000))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # nothing to read: it waits
        caplog.clear()
        stop.set()
        assert await asyncio.wait_for(waiting, 10) == {}  # the stop ended the wait, long before its 60 s
        await member.stop()
        await asyncio.wait_for(reading, 10)
    finally:
        await member.stop()
    assert 1 in lags and lags[-1] in (1, None)  # the record was never committed
    problems = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, problems
