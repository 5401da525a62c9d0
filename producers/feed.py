"""Feeders: documents and seed instructions from files or stdin, and taxonomy disciplines, onto their topics.

Each good item becomes a root record whose id is the hash of its normalised text, so exact
duplicates collapse (within a run they are not even sent again; across runs the sink and
export keep one row per id). Bad items are counted and reported with their location; the
feed never stops on one.

Documents also pass the filters of `[feed.filters]` (producers/filters.py) and the near-duplicate
index (producers/near_duplicates.py); a rejected one goes to `rejected` with why.

Resuming (the default): an item whose record already ended in the store (streamer.storage.resume)
is not sent again, so after losing the broker — the embedded one keeps nothing — feeding the same
inputs again sends exactly the unfinished work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal

import orjson

from consumers.payloads import Discipline, Rejection
from producers.counting import count_items
from producers.filters import DocumentFilters, Verdict
from producers.parts import split_sections
from producers.items import Item, Skipped
from producers.near_duplicates import NearDuplicates
from producers.readers import BadInput, FeedItem, ReadOptions, follow_paths, read_paths
from producers.taxonomy import Taxonomy, discipline_record
from streamer.config import Settings
from consumers import TOPICS
from streamer.kafka.clients import TopicNames, ensure_topics, make_producer
from streamer.kafka.incarnation import SeenIncarnations, incarnations, replaced_line
from streamer.runtime.progress import Progress, Snapshot
from streamer.records import Document, Envelope, RecordData, Seed, StageStamp, derived_id, new_root
from streamer.storage.resume import finished_roots
from streamer.kafka.reader import read_changelog

log = logging.getLogger(__name__)

FeedKind = Literal["docs", "seeds"]
MAX_LISTED_BAD = 50
MAX_LISTED_REASONS = 6  # skip reasons named in the summary line; the --report JSON has them all
FEED_STAGE = "feed"  # `stage` of the rejections the feed's filters make
FILTERS_VERSION = "1"  # part of a rejection's id: a changed rule set rejects under new ids


@dataclass
class FeedReport:
    topic: str
    sent: int = 0
    duplicates: int = 0
    finished: int = 0  # already ended in the store: not sent again
    bad: list[BadInput] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> inputs that are not documents
    extraction: Counter[str] = field(default_factory=Counter)  # HTML pages: "main" or "fallback" -> count
    rejected: Counter[str] = field(default_factory=Counter)  # filter name -> documents sent to `rejected`
    split: int = 0  # long documents sent as several parts (each part counts in `sent`)
    truncated: int = 0  # long documents sent as their first part only
    ids: list[str] = field(default_factory=list)
    read: int = 0  # inputs read (a split document's parts count once here, each in `sent`)


    def summary(self) -> str:
        text = (f"fed {self.sent} records to {self.topic}; {self.duplicates} exact duplicates collapsed; "
                f"{len(self.bad)} bad inputs skipped")
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common(MAX_LISTED_REASONS))
            more = ", ..." if len(self.skipped) > MAX_LISTED_REASONS else ""
            text += f"; {self.skipped.total()} non-document records skipped ({reasons}{more})"
        if self.extraction:
            text += (f"; {self.extraction.total()} HTML pages extracted, {self.extraction['fallback']} of them "
                     f"by the fallback extractor")
        if self.rejected:
            filters = ", ".join(f"{name}: {n}" for name, n in self.rejected.most_common())
            text += f"; {self.rejected.total()} documents rejected by the filters ({filters})"
        if self.split or self.truncated:
            text += f"; {self.split} long documents split into parts, {self.truncated} truncated"
        if self.finished:
            text += f"; {self.finished} already finished in the store not sent again (--no-resume sends them)"
        return text

    def to_json(self) -> bytes:
        return orjson.dumps({"topic": self.topic, "sent": self.sent, "duplicates": self.duplicates,
                             "finished": self.finished,
                             "bad": [{"location": b.location, "reason": b.reason} for b in self.bad],
                             "skipped": dict(self.skipped.most_common()),
                             "extraction": {"main": self.extraction["main"],
                                            "fallback": self.extraction["fallback"]},
                             "rejected": dict(self.rejected.most_common()),
                             "split": self.split, "truncated": self.truncated},
                            option=orjson.OPT_INDENT_2)


def to_record(kind: FeedKind, item: FeedItem) -> Envelope:
    data: RecordData
    if kind == "docs":
        data = Document(text=item.text, source=item.source, meta=dict(item.meta))
    else:
        meta = dict(item.meta)
        document = meta.pop("document", None)
        data = Seed(instruction=item.text, document=document if isinstance(document, str) else None,
                    source=item.location, meta=meta)
    return new_root(data)


def rejection_record(document: Envelope, verdict: Verdict) -> Envelope:
    """What a stage emits on `rejected`, made by the feed: the document (text, source, meta) with the
    filter, its measured value and threshold. Its root and lineage are the document's, so the sink
    stores it and a later feed counts the document as finished (streamer.storage.resume)."""
    score = verdict.value if isinstance(verdict.value, int | float) else None
    rejection = Rejection(stage=FEED_STAGE, reason=verdict.reason, score=score, record=document.data)
    lineage = document.lineage.model_copy(deep=True)
    lineage.stages.append(StageStamp(stage=FEED_STAGE, version=FILTERS_VERSION))
    lineage.details.update({"filter": verdict.filter, "value": verdict.value, "threshold": verdict.threshold})
    return Envelope(id=derived_id(document.id, FEED_STAGE, FILTERS_VERSION, "rejected"), kind=Rejection.kind,
                    root_id=document.root_id, parent_id=document.id, lineage=lineage,
                    data=rejection.model_dump(mode="json"))


def part_records(document: Envelope, limit: int, truncate: bool, min_chars: int = 0) -> list[Envelope]:
    """A document longer than `limit` characters as parts cut by sections (producers.parts), each
    after the first opening with its heading path (or its first part only). A part's id hashes the
    whole document's id and the part's number, so it is the same on every feed; `meta.document_id`
    names the whole document (the page), `meta.part` and `meta.parts` place the part in it."""
    payload = Document.model_validate(document.data)
    if not limit or len(payload.text) <= limit:
        return [document]
    title = payload.meta.get("title")
    parts = split_sections(payload.text, limit, title=title if isinstance(title, str) else None, min_chars=min_chars)
    if len(parts) == 1 and not truncate:
        return [document]
    if truncate:
        meta = {**payload.meta, "truncated": True, "original_chars": len(payload.text),
                "document_id": document.id}
        return [new_root(Document(text=parts[0], source=payload.source, meta=meta),
                         identity=f"{document.id} truncated to {limit}")]
    return [new_root(Document(text=part, source=payload.source,
                              meta={**payload.meta, "part": i, "parts": len(parts), "document_id": document.id}),
                     identity=f"{document.id} part {i} of {len(parts)}")
            for i, part in enumerate(parts, 1)]


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


class RecordSender:
    """Sends envelopes to one topic (key = root id); a record counts as sent once acknowledged."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.producer = make_producer(settings.kafka)
        self.pending: list[asyncio.Future] = []

    async def __aenter__(self) -> RecordSender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.flush()
        finally:
            await self.producer.stop()

    async def send(self, record: Envelope, topic: str | None = None) -> None:
        self.pending.append(await self.producer.send(topic or self.topic, record.to_bytes(),
                                                     key=record.root_id.encode()))
        if len(self.pending) >= 1000:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.gather(*self.pending)
        self.pending.clear()


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
    near = _near_duplicates(settings, topics(kind)) if filters is not None else None
    shown = _feed_progress(report, kind, None if follow else paths) if progress else contextlib.nullcontext()
    try:
        async with RecordSender(settings, report.topic) as sender, shown:
            checks = _Checks(filters, near, sender, report, finished, topics("rejected"))
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


def _near_duplicates(settings: Settings, topic: str) -> NearDuplicates | None:
    if not settings.feed.filters.near_duplicates:
        return None
    directory = settings.storage.data_dir / "state" / "feed.near-duplicates"
    return NearDuplicates(directory, topic, settings.feed.filters.near_duplicate_threshold).open()


@dataclass
class _Checks:
    """What an item goes through between reading and sending: skipped and bad inputs counted,
    exact duplicates and finished inputs left out, then (documents) the filters, near duplicates
    and the split; rejections go to the rejected topic."""

    filters: DocumentFilters | None
    near: NearDuplicates | None
    sender: RecordSender
    report: FeedReport
    finished: set[bytes]
    rejected_topic: str
    seen: set[bytes] = field(default_factory=set)

    def records_of(self, kind: FeedKind, item: Item, out) -> list[Envelope]:
        report = self.report
        report.read += 1
        if isinstance(item, Skipped):
            report.skipped[item.reason] += 1
            return []
        if isinstance(item, BadInput):
            report.bad.append(item)
            if len(report.bad) <= MAX_LISTED_BAD:
                print(f"skipped {item.location}: {item.reason}", file=out, flush=True)
            return []
        if item.extraction:
            report.extraction[item.extraction] += 1
        record = to_record(kind, item)
        key = bytes.fromhex(record.id)
        if key in self.seen:
            report.duplicates += 1
            return []
        self.seen.add(key)
        if key in self.finished:
            report.finished += 1
            return []
        return [record]

    async def passed(self, document: Envelope) -> list[Envelope]:
        """The records to send for one document: none if a filter rejects it or it nearly copies
        one fed before (its rejection goes to the rejected topic instead), its parts if it is
        long, else itself."""
        if self.filters is None:
            return [document]
        verdict = self.filters.check(document.data["text"], document.data["meta"])
        if verdict is None and self.near is not None:
            verdict = self._near_duplicate(document)
        if verdict is not None:
            await self.sender.send(rejection_record(document, verdict), self.rejected_topic)
            self.report.rejected[verdict.filter] += 1
            return []
        settings = self.filters.settings
        parts = part_records(document, settings.max_chars, settings.long_documents == "truncate", settings.min_chars)
        if parts[0] is not document:
            self.report.split += len(parts) > 1
            self.report.truncated += settings.long_documents == "truncate"
        unfinished = [part for part in parts if bytes.fromhex(part.id) not in self.finished]
        self.report.finished += len(parts) - len(unfinished)
        return unfinished

    def _near_duplicate(self, document: Envelope) -> Verdict | None:
        assert self.near is not None
        hit = self.near.nearest(document.id, document.data["text"])
        if hit is None:
            self.near.add(document.id, document.data["text"])
            return None
        copied, similarity = hit
        document.data["meta"]["near_duplicate_of"] = copied  # kept in the rejection's record
        return Verdict("near_duplicate", similarity, self.near.threshold)


async def note_incarnations(settings: Settings, out=sys.stderr) -> list[str]:
    """Tell the user (one line) when the broker's topics are not the ones this data dir last saw;
    remember the current ones. Returns the replaced topics."""
    current = await incarnations(settings, list(TOPICS))
    names = TopicNames(settings.kafka.topic_prefix)
    seen = SeenIncarnations(settings.storage.data_dir)
    full = {names(t): i for t, i in current.items()}
    replaced = seen.replaced(full)
    if replaced:
        print(replaced_line(settings.kafka.bootstrap_servers, replaced, settings.kafka.topic_prefix), file=out,
              flush=True)
    seen.note(full)
    return replaced


@contextlib.asynccontextmanager
async def _feed_progress(report: FeedReport, kind: str, finite_paths: list[str] | None) -> AsyncIterator[None]:
    """Live progress of a feed; with finite inputs, their item count (learnt in the background,
    when cheap) gives what is left and an ETA."""
    total: int | None = None
    cancelled = threading.Event()

    async def count() -> None:
        nonlocal total
        total = await asyncio.to_thread(count_items, finite_paths, cancelled)

    def snapshot() -> list[Snapshot]:
        left = max(0, total - report.read) if total is not None else None
        note = (f"{report.sent} sent, {report.duplicates} duplicates, {report.finished} finished before, "
                f"{len(report.bad)} bad, {report.skipped.total()} not documents, {report.rejected.total()} rejected")
        return [Snapshot(f"feed {kind}", report.read, left=left, note=note)]

    done = asyncio.Event()
    counting = asyncio.create_task(count()) if finite_paths else None
    ticker = asyncio.create_task(Progress(snapshot).run(done))
    try:
        yield
    finally:
        cancelled.set()  # a count still running is of no use any more
        done.set()
        await asyncio.gather(*(t for t in (counting, ticker) if t is not None), return_exceptions=True)


@dataclass
class TaxonomyFeedReport:
    topic: str
    sent: list[str] = field(default_factory=list)  # discipline names
    already_fed: list[str] = field(default_factory=list)
    topic_is_new: bool = False  # glan.disciplines was recreated since this data dir last saw it

    def summary(self) -> str:
        text = f"fed {len(self.sent)} discipline{'' if len(self.sent) == 1 else 's'} to {self.topic}"
        if self.already_fed:
            text += (f"; {len(self.already_fed)} already on the topic were not sent again "
                     f"(--again sends them anyway)")
        if self.topic_is_new and self.sent:
            text += ("; the topic is newer than this data dir's store, so disciplines fed before it are sent again: "
                     "their finished LLM work is answered from the response cache, their stored samples are kept "
                     "once each")
        return text


async def feed_taxonomy(settings: Settings, taxonomy: Taxonomy, *, only: list[str] | None = None,
                        again: bool = False) -> TaxonomyFeedReport:
    """Put the taxonomy's disciplines (or those selected by `only`) on glan.disciplines, skipping
    the ones already there: a discipline added to the file later is the only one that generates."""
    await ensure_topics(settings, TOPICS)
    report = TaxonomyFeedReport(topic=TopicNames(settings.kafka.topic_prefix)("glan.disciplines"))
    # "Already fed" is what the topic holds; a recreated topic holds none of the earlier ones.
    report.topic_is_new = report.topic in await note_incarnations(settings)
    fed: set[str] = set()
    if not again:
        await read_changelog(settings, "glan.disciplines", Discipline, lambda env, _: fed.add(env.id))
    async with RecordSender(settings, report.topic) as sender:
        for entry in taxonomy.select(only):
            record = discipline_record(entry)
            if record.id in fed:
                report.already_fed.append(entry.name)
                continue
            await sender.send(record)
            report.sent.append(entry.name)
    return report
