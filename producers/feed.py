"""The feed of documents and seed instructions from files or stdin onto their topics (taxonomy
disciplines: producers.taxonomy_feed).

Each good item becomes a root record whose id is the hash of its normalised text, so exact
duplicates collapse (within a run they are not even sent again; across runs the sink and
export keep one row per id). Bad items are counted and reported with their location; the
feed never stops on one.

Documents also pass the filters of `[feed.filters]` (producers/filters.py) and the near-duplicate
index (producers/near_duplicates.py); a rejected one goes to `rejected` with why.

Resuming (the default): an item whose record already ended in the store (streamer.storage.resume)
is not sent again, so after losing the broker — the embedded one keeps nothing — feeding the same
inputs again sends exactly the unfinished work.

This module runs the feed; each of its jobs has its own: the report (producers.feed_report), the
records sent (producers.root_records), the sender (producers.sender), what an item goes through
(producers.checks: filters, near duplicates, split), the incarnation notice
(producers.incarnation_notice) and the live progress (producers.feed_progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import AsyncIterator

from consumers import TOPICS
from producers.checks import MAX_LISTED_BAD, FeedChecks, near_duplicates_index
from producers.feed_progress import feed_progress
from producers.feed_report import FeedReport
from producers.filters import DocumentFilters
from producers.incarnation_notice import note_incarnations
from producers.items import Item
from producers.readers import ReadOptions, follow_paths, read_paths
from producers.root_records import FeedKind
from producers.sender import RecordSender
from streamer.config import Settings
from streamer.kafka.clients import TopicNames, ensure_topics
from streamer.storage.resume import finished_roots


async def _items(paths: list[str], opts: ReadOptions, follow: bool, stop: asyncio.Event
                 ) -> AsyncIterator[Item]:
    if follow:
        async for item in follow_paths(paths, opts, stop=stop):
            yield item
        return
    for n, item in enumerate(read_paths(paths, opts)):
        if stop.is_set():
            return
        yield item
        if n % 256 == 0:
            await asyncio.sleep(0)  # let the producer's network I/O run between reads


async def feed(settings: Settings, kind: FeedKind, paths: list[str], *, text_field: str | None = None,
               follow: bool = False, stop: asyncio.Event | None = None, keep_ids: bool = False,
               progress: bool = False, resume: bool = True, out=sys.stderr) -> FeedReport:
    stop = stop or asyncio.Event()
    topics = TopicNames(settings.kafka.topic_prefix)
    await ensure_topics(settings, TOPICS)
    await note_incarnations(settings, out)
    default_field = settings.feed.text_field if kind == "docs" else settings.feed.seed_text_field
    opts = ReadOptions(text_field=text_field or default_field, max_bytes=settings.feed.max_doc_bytes,
                       max_record_bytes=settings.feed.max_record_bytes, max_file_bytes=settings.feed.max_file_bytes)
    report = FeedReport(topic=topics(kind))
    finished: set[bytes] = (await asyncio.to_thread(finished_roots, settings.storage.store_dir,
                                                    settings.kafka.topic_prefix, kind)) if resume else set()
    # Filters and the split apply to documents only (a seed is a user's instruction, short by nature).
    filters = DocumentFilters(settings.feed.filters) if kind == "docs" and settings.feed.filters.enabled else None
    near = near_duplicates_index(settings, topics(kind)) if filters is not None else None
    shown = feed_progress(report, kind, None if follow else paths) if progress else contextlib.nullcontext()
    try:
        async with RecordSender(settings, report.topic) as sender, shown:
            checks = FeedChecks(filters, near, sender, report, finished, topics("rejected"))
            async for item in _items(paths, opts, follow, stop):
                for record in checks.records_of(kind, item, out):
                    for sent in await checks.passed(record):
                        await sender.send(sent)
                        report.sent += 1
                        if keep_ids:
                            report.ids.append(sent.id)
    finally:
        if near is not None:
            near.close()
    if len(report.bad) > MAX_LISTED_BAD:
        print(f"... and {len(report.bad) - MAX_LISTED_BAD} more bad inputs", file=out, flush=True)
    return report
