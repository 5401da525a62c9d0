"""Sampling for `status`: what is watched, and one sample of offsets, tallies and worker metrics.

From Kafka, without joining any group: each stage's committed offsets (a consumer carrying the
stage's group id that never subscribes can ask the coordinator for them, which moves nothing)
and the end offsets of its topics; topics several stages write are read (streamer.kafka.reader)
and each record is counted for the stage that wrote it. From the workers: their metrics
endpoints (streamer.metrics.registry), and the counters of worker runs that are over or did not
answer, from their files (streamer.metrics.runs), so LLM counters are totals of the pipeline run.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Self

import orjson
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import Settings
from consumers import TOPICS
from streamer.kafka.clients import TopicNames, make_consumer, start_consumer
from streamer.kafka.incarnation import TopicIdentity
from streamer.kafka.reader import TopicReader
from streamer.llm.batch import batch_costs
from streamer.metrics.registry import WorkerEntry, registered_workers
from streamer.metrics.runs import counted_runs
from streamer.records import DeadLetter

ALWAYS_TALLIED = ("rejected", "dlq")  # counted per stage whoever writes them
SCRAPE_TIMEOUT = 2.0


# What is watched ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Watched:
    """A consumer group of the pipeline: a stage, or the sink."""

    name: str
    group: str
    inputs: tuple[str, ...]  # full topic names
    sole_outputs: tuple[str, ...] = ()  # full names of topics no one else writes
    tallied_outputs: tuple[str, ...] = ()  # full names of shared topics, counted by writer
    dlq: str | None = None  # full topic names, for the stages that write them
    rejected: str | None = None

    @property
    def is_stage(self) -> bool:
        return self.dlq is not None


def watched_groups(settings: Settings) -> list[Watched]:
    from consumers import PIPELINE, SINK_TOPICS

    topic = TopicNames(settings.kafka.topic_prefix)
    tallied = tallied_topics()
    out = []
    for stage in PIPELINE:
        bound = stage.bind(settings)
        outputs = (*stage.output_topics, "dlq")
        out.append(Watched(
            stage.name, topic(bound.group), (topic(stage.input_topic),),
            tuple(topic(t) for t in outputs if t not in tallied), tuple(topic(t) for t in outputs if t in tallied),
            dlq=topic("dlq"), rejected=topic("rejected") if "rejected" in stage.output_topics else None,
        ))
    out.append(Watched("sink", topic("sink"), tuple(topic(t) for t in SINK_TOPICS)))
    return out


def tallied_topics() -> set[str]:
    """Output topics that more than one stage writes (unprefixed), plus rejected and dlq."""
    from consumers import PIPELINE

    writers = Counter(t for stage in PIPELINE for t in stage.output_topics)
    return {t for t, n in writers.items() if n > 1} | set(ALWAYS_TALLIED)


def writer_of(value: bytes | None) -> str:
    """The stage that wrote a record: a dead letter names it, others carry it last in their lineage."""
    try:
        env = orjson.loads(value or b"")
        if env.get("kind") == DeadLetter.kind:
            return str(env["data"]["stage"])
        stamps = env.get("lineage", {}).get("stages") or []
        return str(stamps[-1]["stage"]) if stamps else "(fed)"
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return "(unreadable)"


# Sampling -------------------------------------------------------------------------------------
@dataclass
class WorkerMetrics:
    entry: WorkerEntry
    samples: list[tuple[str, dict[str, str], float]] | None  # None: endpoint did not answer

    def total(self, name: str, **labels: str) -> float:
        return sum(value for n, have, value in self.samples or ()
                   if n == name and all(have.get(k) == v for k, v in labels.items()))


@dataclass
class Sample:
    at: float
    begins: dict[TopicPartition, int]
    ends: dict[TopicPartition, int]
    committed: dict[str, dict[TopicPartition, int | None]]  # group -> partition -> offset
    tallies: dict[str, Counter[str]]  # full topic name -> writer stage -> records
    workers: list[WorkerMetrics] = field(default_factory=list)
    incarnations: dict[str, str] = field(default_factory=dict)  # full topic name -> incarnation
    # Worker runs on disk (streamer.metrics.runs): counters of runs not scraped live, per stage.
    past: dict[str, dict[str, float]] = field(default_factory=dict)
    past_runs: int = 0  # finished runs those counters include
    waiting: dict[str, str] = field(default_factory=dict)  # stage -> what it waits for (from live workers)
    # The batch lane's collected batches per stage (streamer.llm.batch records: exact, whatever a SIGKILL lost).
    batches: dict[str, dict[str, float]] = field(default_factory=dict)


class Tally:
    """Shared topics read from the beginning and followed: records per writing stage."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.topics = topics
        self.reader = TopicReader(settings)
        self.counts: dict[str, Counter[str]] = {t: Counter() for t in topics}

    async def read_to(self, begins: dict[TopicPartition, int], ends: dict[TopicPartition, int]
                      ) -> dict[str, Counter[str]]:
        mine = {tp: end for tp, end in ends.items() if tp.topic in self.counts}
        # The first sample, or a topic created since the last: its partitions from their beginning.
        self.reader.assign({tp: begins[tp] for tp in mine if tp not in self.reader.assigned})
        async for record in self.reader.records(mine, timeout_ms=500, max_records=5000):
            self.counts[record.topic][writer_of(record.value)] += 1
        return {t: Counter(c) for t, c in self.counts.items()}


class Sampler:
    """Long-lived clients for repeated samples (`--watch` keeps them; a tally is read only once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.groups = watched_groups(settings)
        prefix = settings.kafka.topic_prefix
        self.tally = Tally(settings, sorted(f"{prefix}{t}" for t in tallied_topics()))
        self.offsets = TopicReader(settings)
        # One client per group id: committed offsets are asked under the group's own id.
        self.committed_by = {g.group: make_consumer(settings.kafka, group_id=g.group) for g in self.groups}
        self.identity = TopicIdentity(settings)

    async def __aenter__(self) -> Self:
        try:
            for reader in (self.offsets, self.tally.reader):
                await reader.start()
            for client in self.committed_by.values():
                await start_consumer(client)
        except BaseException:
            await self.close()  # the ones not started too: they complain when collected unclosed
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.identity.close()
        for reader in (self.offsets, self.tally.reader):
            await reader.stop()
        for client in self.committed_by.values():
            await client.stop()

    async def sample(self) -> Sample:
        topics = {t for g in self.groups for t in (*g.inputs, *g.sole_outputs)} | set(self.tally.topics)
        await self.offsets.refresh()  # topics created since the last sample appear
        tps = [tp for t in sorted(topics) for tp in self.offsets.partitions(t)]
        ends = await self.offsets.ends(tps)
        begins = await self.offsets.beginnings(tps)
        committed = {g.group: await self._committed(g, tps) for g in self.groups}
        at = time.time()  # rates are about offsets, however long the tally below takes
        tallies = await self.tally.read_to(begins, ends)
        workers = await asyncio.gather(*(scrape(w) for w in registered_workers(self.settings)))
        prefix = TopicNames(self.settings.kafka.topic_prefix)
        incarnations = await self.identity.of([prefix(t) for t in TOPICS], fresh=True)
        # Read after the scrapes: a run that ends in between is then counted from its last file.
        scraped = {w.entry.run for w in workers if w.samples is not None and w.entry.run}
        past, past_runs, waiting = await asyncio.to_thread(counted_runs, self.settings, scraped)
        batches = await asyncio.to_thread(batch_costs, self.settings.storage.data_dir, self.settings.kafka.topic_prefix)
        return Sample(at, begins, ends, committed, tallies, list(workers), incarnations, past, past_runs, waiting,
                      batches)

    async def _committed(self, group: Watched, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        client = self.committed_by[group.group]
        mine = [tp for tp in tps if tp.topic in group.inputs]
        return dict(zip(mine, await asyncio.gather(*(client.committed(tp) for tp in mine))))


async def scrape(entry: WorkerEntry) -> WorkerMetrics:
    def fetch() -> str:
        with urllib.request.urlopen(entry.url, timeout=SCRAPE_TIMEOUT) as resp:
            return resp.read().decode()

    try:
        text = await asyncio.to_thread(fetch)
    except OSError:
        return WorkerMetrics(entry, None)  # gone since it registered, or unreachable from here
    samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]
    return WorkerMetrics(entry, samples)


