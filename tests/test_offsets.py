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
