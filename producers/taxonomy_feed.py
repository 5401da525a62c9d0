"""Feeding GLAN's disciplines: the taxonomy's entries not yet on `glan.disciplines`."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers import TOPICS
from consumers.payloads import Discipline
from producers.incarnation_notice import note_incarnations
from producers.sender import RecordSender
from producers.taxonomy import Taxonomy, discipline_record
from streamer.config import Settings
from streamer.kafka.clients import TopicNames, ensure_topics
from streamer.kafka.reader import read_changelog


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
