"""`synthstream dlq`: list and show dead letters, and redrive them once their cause is fixed.

A dead letter is one failure of one input record: its id (a hash of the input id, the stage and
its version) plus the input's position. Redriving puts the original input envelope, unchanged and
with its id, back on the stage's input topic, so the outputs get the ids they would have had and
the idempotent sink keeps storage exactly-once. After the input is acknowledged a marker goes to
`dlq.redriven`; letters with a marker are never sent again. (If the redriven record fails again
it is a new failure at a new position, so it can be redriven in its turn.)

Dead letters and markers are also read from the store (the sink keeps both): a letter whose topic
was lost with an earlier broker is still listed, marked as stored only, and can be redriven to the
current topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import ValidationError

from streamer.config import Settings
from consumers import TOPICS
from streamer.kafka.clients import TopicNames, ensure_topics, make_producer
from streamer.kafka.positions import FROM_BEGINNING
from streamer.kafka.reader import UnknownTopicError, observe
from streamer.ops.query import Where, matches_all, short_text
from streamer.records import DeadLetter, Envelope, RecordData, stable_hash
from streamer.storage import store

REDRIVEN_TOPIC = "dlq.redriven"


class UnknownDeadLetterError(LookupError):
    pass


class Redrive(RecordData):
    """Marker: the input of dead letter `dead_letter_id` (failed at `failed_partition`/`failed_offset`
    of its input topic) was put back at `topic[partition]@offset`."""

    kind: ClassVar[str] = "redrive"
    dead_letter_id: str
    stage: str
    input_id: str
    failed_partition: int
    failed_offset: int
    topic: str
    partition: int
    offset: int
    redriven_at: float


def failure_key(letter_id: str, partition: int, offset: int) -> str:
    return f"{letter_id}@{partition}:{offset}"


@dataclass
class Entry:
    """A dead letter as read from the dlq topic, with its redrive marker if it has one."""

    envelope: Envelope
    letter: DeadLetter
    redrive: Redrive | None = None
    stored_only: bool = False  # its topic is gone (an earlier broker); known from the store

    @property
    def key(self) -> str:
        return failure_key(self.envelope.id, self.letter.partition, self.letter.offset)

    @property
    def status(self) -> str:
        return "redriven" if self.redrive else "pending"


@dataclass
class RedriveReport:
    sent: list[Redrive] = field(default_factory=list)
    already: int = 0  # selected letters redriven by an earlier command
    collapsed: int = 0  # copies of a letter (its input redelivered, failed again) sent with it
    unusable: list[Entry] = field(default_factory=list)  # input was not a synthstream record


async def load(settings: Settings) -> list[Entry]:
    """Every dead letter on the dlq topic, partition by partition, then those only the store still
    has, each with its redrive marker."""
    markers = {failure_key(m.dead_letter_id, m.failed_partition, m.failed_offset): m
               async for _, m in _read(settings, REDRIVEN_TOPIC, Redrive)}
    for _, m in _stored(settings, REDRIVEN_TOPIC, Redrive):
        markers.setdefault(failure_key(m.dead_letter_id, m.failed_partition, m.failed_offset), m)
    entries = [Entry(envelope, letter) async for envelope, letter in _read(settings, "dlq", DeadLetter)]
    on_topic = {entry.key for entry in entries}
    for envelope, letter in _stored(settings, "dlq", DeadLetter):
        entry = Entry(envelope, letter, stored_only=True)
        if entry.key not in on_topic:
            on_topic.add(entry.key)
            entries.append(entry)
    for entry in entries:
        entry.redrive = markers.get(entry.key)
    return entries


def _stored(settings: Settings, name: str, model: type[RecordData]) -> Iterator[tuple[Envelope, Any]]:
    """Records of a topic as the sink stored them (none where this machine has no store)."""
    topic = TopicNames(settings.kafka.topic_prefix)(name)
    if not (settings.storage.store_dir / topic).is_dir():
        return
    for raw in store.envelopes(settings.storage.store_dir, topic):
        try:
            envelope = Envelope.model_validate(raw)
            yield envelope, model.model_validate(envelope.data)
        except ValidationError:
            continue


async def _read(settings: Settings, name: str, model: type[RecordData]) -> AsyncIterator[tuple[Envelope, Any]]:
    """Every record of a topic up to its current end, typed; nothing if the topic does not exist yet."""
    topic = TopicNames(settings.kafka.topic_prefix)(name)
    records = observe(settings, topic, FROM_BEGINNING, follow=False, stop=asyncio.Event())
    async with contextlib.aclosing(records):
        with contextlib.suppress(UnknownTopicError):
            async for record in records:
                envelope = Envelope.from_bytes(record.value)
                yield envelope, model.model_validate(envelope.data)


def select(entries: list[Entry], *, stage: str | None = None, wheres: list[Where] | None = None,
           ids: list[str] | None = None) -> list[Entry]:
    """Entries of `stage`, matching every `--where`, and with one of `ids` (a unique prefix is enough)."""
    chosen = [e for e in entries if (stage is None or e.letter.stage == stage)
              and (not wheres or matches_all(e.envelope.model_dump(mode="json"), wheres))]
    if ids:
        wanted = {_resolve_id(entries, i) for i in ids}
        chosen = [e for e in chosen if e.envelope.id in wanted]
    return chosen


def _resolve_id(entries: list[Entry], prefix: str) -> str:
    found = {e.envelope.id for e in entries if e.envelope.id.startswith(prefix)}
    if not found:
        raise UnknownDeadLetterError(f"no dead letter with id {prefix!r} (see `synthstream dlq list`)")
    if len(found) > 1:
        raise UnknownDeadLetterError(f"id {prefix!r} is ambiguous: {', '.join(sorted(found))}")
    return found.pop()


async def redrive(settings: Settings, entries: list[Entry]) -> RedriveReport:
    """Put the input of every selected, not yet redriven letter back on its input topic, once."""
    report = RedriveReport(already=sum(1 for e in entries if e.redrive))
    by_failure: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.redrive is None:
            # Same id = same input and stage version: one send serves every copy.
            by_failure.setdefault(entry.envelope.id, []).append(entry)
    if not by_failure:
        return report
    await ensure_topics(settings, TOPICS)  # the input topics too: after a broker loss only the store knows them
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for copies in by_failure.values():
            try:
                original = Envelope.model_validate(copies[0].letter.input)
            except ValidationError:
                report.unusable.append(copies[0])
                continue
            # The input first, acknowledged; only then the marker. After a crash in between the next
            # redrive sends it again; the repeat has the same ids, so export still keeps one row each.
            sent = await producer.send_and_wait(copies[0].letter.input_topic, original.to_bytes(),
                                                key=original.root_id.encode())
            for entry in copies:
                marker = _marker(entry, original, sent.topic, sent.partition, sent.offset)
                await producer.send_and_wait(TopicNames(settings.kafka.topic_prefix)(REDRIVEN_TOPIC),
                                             _marker_envelope(entry, marker).to_bytes(),
                                             key=entry.envelope.root_id.encode())
            report.sent.append(marker)
            report.collapsed += len(copies) - 1
    finally:
        await producer.stop()
    return report


def _marker(entry: Entry, original: Envelope, topic: str, partition: int, offset: int) -> Redrive:
    return Redrive(dead_letter_id=entry.envelope.id, stage=entry.letter.stage, input_id=original.id,
                   failed_partition=entry.letter.partition, failed_offset=entry.letter.offset,
                   topic=topic, partition=partition, offset=offset, redriven_at=time.time())


def _marker_envelope(entry: Entry, marker: Redrive) -> Envelope:
    return Envelope(id=stable_hash(entry.key, "redrive"), kind=Redrive.kind, root_id=entry.envelope.root_id,
                    parent_id=entry.envelope.id, method=entry.envelope.method, data=marker.model_dump(mode="json"))


# Output ----------------------------------------------------------------------------------------
def table_lines(entries: list[Entry]) -> list[str]:
    lines = [f"{'ID':<16}  {'STAGE':<11}  {'ERROR':<22}  {'TRIES':>5}  {'STATUS':<8}  MESSAGE"]
    for e in entries:
        message = short_text({"data": {"error": e.letter.error}}, width=80)
        status = e.status + ("*" if e.stored_only else "")
        lines.append(f"{e.envelope.id:<16}  {e.letter.stage:<11}  {e.letter.error_type:<22}  {e.letter.attempts:>5}  "
                     f"{status:<8}  {message}")
    return lines


STORED_ONLY_NOTE = ("* only in the store: its dlq topic was lost with an earlier broker; `dlq redrive` sends its "
                    "input to the current topic")


def redrive_line(marker: Redrive) -> str:
    return (f"redriven {marker.dead_letter_id} ({marker.stage}): input {marker.input_id} -> "
            f"{marker.topic}[{marker.partition}]@{marker.offset}")


def status_line(entry: Entry) -> str:
    if entry.redrive is None:
        return f"{entry.envelope.id}: pending (not redriven)"
    when = datetime.fromtimestamp(entry.redrive.redriven_at).isoformat(timespec="seconds")
    return f"{entry.envelope.id}: redriven at {when} to {entry.redrive.topic}[{entry.redrive.partition}]" \
           f"@{entry.redrive.offset}"
