"""End offsets that are right on every broker.

The embedded broker (tansu) answers ListOffsets(latest) with the base offset of a partition's
last record batch + 1, so after a batch of 8 records at offsets 0..7 it says 1, not 8. Its fetch
responses carry the right high watermark, and so does reading the last batch itself. On Kafka
the probe below only confirms what ListOffsets said.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

PROBE_TIMEOUT = 5.0


async def exact_end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets of `tps`, each corrected by fetching from the last offset the broker reported.

    `consumer` must have no group; it is assigned the partitions to probe, then released.
    """
    ends = await consumer.end_offsets(tps) if tps else {}
    begins = await consumer.beginning_offsets(tps) if tps else {}
    pending = {tp for tp in tps if ends[tp] > begins[tp]}
    if not pending:
        return ends
    consumer.assign(sorted(pending))
    for tp in pending:
        consumer.seek(tp, ends[tp] - 1)
    deadline = asyncio.get_running_loop().time() + PROBE_TIMEOUT
    try:
        while pending and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batch.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1 if records else 0, consumer.highwater(tp) or 0)
                pending.discard(tp)
    finally:
        # An idle assigned consumer long-polls; on the embedded broker its other requests wait behind that.
        consumer.unsubscribe()
    return ends
