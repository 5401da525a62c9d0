"""What a fed item goes through between reading and sending: skipped and bad inputs counted (and
the first ones printed), exact duplicates and inputs already finished in the store left out, then,
for documents, the filters (producers.filters), the near-duplicate index (producers.near_duplicates)
and the split of long documents (producers.parts); rejections go to the rejected topic."""

from __future__ import annotations

from dataclasses import dataclass, field

from producers.feed_report import FeedReport
from producers.filters import DocumentFilters, Verdict
from producers.items import BadInput, Item, Skipped
from producers.near_duplicates import NearDuplicates
from producers.root_records import FeedKind, part_records, rejection_record, to_record
from producers.sender import RecordSender
from streamer.config import Settings
from streamer.records import Envelope

MAX_LISTED_BAD = 50  # bad inputs printed one by one; the --report JSON has them all


def near_duplicates_index(settings: Settings, topic: str) -> NearDuplicates | None:
    """The feed's near-duplicate index of `topic` (opened: one feed at a time writes it), or None when off."""
    if not settings.feed.filters.near_duplicates:
        return None
    directory = settings.storage.data_dir / "state" / "feed.near-duplicates"
    return NearDuplicates(directory, topic, settings.feed.filters.near_duplicate_threshold).open()


@dataclass
class FeedChecks:
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
