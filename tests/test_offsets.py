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
