"""The records a feed sends: an item as a root record (document or seed), a document the filters
reject as the rejection a stage would make, a long document as its parts (producers.parts)."""

from __future__ import annotations

from typing import Literal

from consumers.payloads import Rejection
from producers.filters import Verdict
from producers.items import FeedItem
from producers.parts import split_sections
from streamer.records import Document, Envelope, RecordData, Seed, StageStamp, derived_id, new_root

FEED_STAGE = "feed"  # `stage` of the rejections the feed's filters make
FILTERS_VERSION = "1"  # part of a rejection's id: a changed rule set rejects under new ids
FeedKind = Literal["docs", "seeds"]


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
