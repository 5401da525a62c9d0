"""`synthstream status`: where the pipeline stands, per stage, read from Kafka and the workers.

From Kafka, without joining any group: each stage's committed offsets (a consumer carrying the
stage's group id that never subscribes can ask the coordinator for them, which moves nothing)
against the end offsets of its input topic give the lag per partition and the records consumed;
end offsets of the topics only that stage writes give what it produced. Topics several stages
write (`instructions`, `rejected`, `dlq`) are read and each record is counted for the stage that
wrote it (the last stamp of its lineage; a dead letter's `data.stage`). Rates are differences
between two samples.

From the workers: in-flight records and LLM requests, tokens and 429s exist only inside worker
processes, so they are scraped from the metrics endpoints the workers registered
(streamer.metrics_server); without one they are n/a.

Incarnations: a committed offset beyond its topic's end was committed on an earlier incarnation of
the topic (its next worker starts the new one from the beginning); topics whose incarnation is not
the one this data dir last worked with are named in one line (a restarted broker).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Self, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import Settings
from streamer.kafka.clients import TOPICS, TopicNames, make_consumer, start_consumer
from streamer.kafka.consumer import sleep_until
from streamer.kafka.end_offsets import exact_end_offsets
from streamer.kafka.incarnation import SeenIncarnations, TopicIdentity, replaced_line
from streamer.metrics import REQUEST_OUTCOMES
from streamer.metrics_server import WorkerEntry, registered_workers
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
    from consumers import PIPELINE
    from streamer.storage.sink import SINK_TOPICS

    topic = TopicNames(settings.kafka.topic_prefix)
    tallied = tallied_topics()
    out = []
    for stage in PIPELINE:
        stage_settings = stage.settings_in(settings)
        outputs = (*stage.output_topics, "dlq")
        out.append(Watched(
            stage.name, topic(stage.group(stage_settings)), (topic(stage.input_topic),),
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


class _Tally:
    """Shared topics read from the beginning and followed: records per writing stage."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.topics = topics
        self.consumer = make_consumer(settings.kafka, group_id=None)
        self.counts: dict[str, Counter[str]] = {t: Counter() for t in topics}
        self.assigned: set[TopicPartition] = set()

    async def read_to(self, ends: dict[TopicPartition, int]) -> dict[str, Counter[str]]:
        mine = {tp: end for tp, end in ends.items() if tp.topic in self.counts}
        if new := set(mine) - self.assigned:  # first sample, or a topic created since the last one
            kept = {tp: await self.consumer.position(tp) for tp in self.assigned}
            self.assigned |= new
            self.consumer.assign(list(self.assigned))  # new partitions start at their beginning
            for tp, position in kept.items():
                self.consumer.seek(tp, position)
        while any([await self.consumer.position(tp) < end for tp, end in mine.items()]):
            batch = await self.consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                self.counts[tp.topic].update(writer_of(r.value) for r in records if r.offset < mine[tp])
        return {t: Counter(c) for t, c in self.counts.items()}


class Sampler:
    """Long-lived clients for repeated samples (`--watch` keeps them; a tally is read only once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.groups = watched_groups(settings)
        prefix = settings.kafka.topic_prefix
        self.tally = _Tally(settings, sorted(f"{prefix}{t}" for t in tallied_topics()))
        self.offsets = make_consumer(settings.kafka, group_id=None)
        # One client per group id: committed offsets are asked under the group's own id.
        self.committed_by = {g.group: make_consumer(settings.kafka, group_id=g.group) for g in self.groups}
        self.identity = TopicIdentity(settings)

    def _clients(self) -> list[AIOKafkaConsumer]:
        return [self.offsets, self.tally.consumer, *self.committed_by.values()]

    async def __aenter__(self) -> Self:
        try:
            for client in self._clients():
                await start_consumer(client)
        except BaseException:
            await self.close()  # the ones not started too: they complain when collected unclosed
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.identity.close()
        for client in self._clients():
            await client.stop()

    async def sample(self) -> Sample:
        topics = {t for g in self.groups for t in (*g.inputs, *g.sole_outputs)} | set(self.tally.topics)
        cluster = await self.offsets._client.fetch_all_metadata()  # fresh: topics created since appear
        tps = [TopicPartition(t, p) for t in sorted(topics) for p in sorted(cluster.partitions_for_topic(t) or ())]
        ends = await exact_end_offsets(self.offsets, tps)
        begins = await self.offsets.beginning_offsets(tps) if tps else {}
        committed = {g.group: await self._committed(g, tps) for g in self.groups}
        at = time.time()  # rates are about offsets, however long the tally below takes
        tallies = await self.tally.read_to(ends)
        workers = await asyncio.gather(*(scrape(w) for w in registered_workers(self.settings)))
        prefix = TopicNames(self.settings.kafka.topic_prefix)
        incarnations = await self.identity.of([prefix(t) for t in TOPICS], fresh=True)
        return Sample(at, begins, ends, committed, tallies, list(workers), incarnations)

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


# Figures ----------------------------------------------------------------------------------------
@dataclass
class Figures:
    """One group's row of the status, from two samples."""

    name: str
    kind: str  # "stage" or "sink"
    group: str
    partitions: list[dict[str, Any]]
    consumed: int
    produced: int | None
    in_rate: float
    out_rate: float | None
    dlq: int | None
    rejected: int | None
    in_flight: int | None
    llm: dict[str, int] | None

    @property
    def lag(self) -> int:
        return sum(p["lag"] for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.name, "kind": self.kind, "group": self.group,
            "lag": {"total": self.lag, "partitions": self.partitions},
            "in": {"total": self.consumed, "per_s": round(self.in_rate, 2)},
            "out": {"total": self.produced,
                    "per_s": None if self.out_rate is None else round(self.out_rate, 2)},
            "dlq": self.dlq, "rejected": self.rejected, "in_flight": self.in_flight, "llm": self.llm,
        }


def lag_partitions(group: Watched, s: Sample) -> list[dict[str, Any]]:
    rows = []
    for tp, end in sorted(s.ends.items()):
        if tp.topic in group.inputs:
            committed = s.committed[group.group].get(tp)
            start = s.begins[tp] if committed is None else committed
            # Beyond the end: committed on an earlier incarnation; the whole new topic is still to do.
            beyond = committed is not None and committed > end
            rows.append({"topic": tp.topic, "partition": tp.partition, "committed": committed, "end": end,
                         "lag": end - s.begins[tp] if beyond else max(0, end - start), "beyond_end": beyond})
    return rows


def consumed(group: Watched, s: Sample) -> int:
    return sum(max(0, off - s.begins.get(tp, 0)) for tp, off in s.committed[group.group].items()
               if off is not None and off <= s.ends.get(tp, off))


def produced(group: Watched, s: Sample) -> int:
    sole = sum(end - s.begins.get(tp, 0) for tp, end in s.ends.items() if tp.topic in group.sole_outputs)
    return sole + sum(s.tallies[t][group.name] for t in group.tallied_outputs if t in s.tallies)


def worker_figures(group: Watched, s: Sample) -> tuple[int | None, dict[str, int] | None]:
    """In-flight records and LLM usage summed over the reachable workers that run the group's stage."""
    serving = [w for w in s.workers if w.samples is not None and group.name in w.entry.stages]
    if not serving or not group.is_stage:
        return None, None

    def total(name: str, **labels: str) -> int:
        return int(sum(w.total(name, stage=group.name, **labels) for w in serving))

    llm = {
        "requests": sum(total("synthstream_llm_requests_total", outcome=o) for o in REQUEST_OUTCOMES),
        "rate_limited": total("synthstream_llm_requests_total", outcome="rate_limited"),
        "cache_hits": total("synthstream_llm_requests_total", outcome="cache_hit"),
        "tokens": total("synthstream_llm_tokens_total"),
    }
    return total("synthstream_stage_in_flight"), llm


def figures(group: Watched, before: Sample, now: Sample) -> Figures:
    elapsed = max(now.at - before.at, 1e-6)
    made_now = produced(group, now) if group.is_stage else None
    made_before = produced(group, before) if group.is_stage else None
    in_flight, llm = worker_figures(group, now)
    return Figures(
        name=group.name, kind="stage" if group.is_stage else "sink", group=group.group,
        partitions=lag_partitions(group, now),
        consumed=consumed(group, now), produced=made_now,
        in_rate=(consumed(group, now) - consumed(group, before)) / elapsed,
        out_rate=None if made_now is None or made_before is None else (made_now - made_before) / elapsed,
        dlq=_tallied(now, group.dlq, group.name), rejected=_tallied(now, group.rejected, group.name),
        in_flight=in_flight, llm=llm,
    )


def _tallied(s: Sample, topic: str | None, stage: str) -> int | None:
    return s.tallies[topic][stage] if topic in s.tallies else None


# Output -----------------------------------------------------------------------------------------
NO_WORKERS = "n/a (no worker serving metrics; start workers with --metrics-port)"
COLUMNS = ("stage", "lag", "in", "in/s", "out", "out/s", "in flight", "dlq", "rejected",
           "LLM calls", "tokens", "429s", "lag by partition")


@dataclass
class Status:
    settings: Settings
    before: Sample
    now: Sample
    rows: list[Figures]

    @classmethod
    def between(cls, sampler: Sampler, before: Sample, now: Sample) -> Status:
        return cls(sampler.settings, before, now, [figures(g, before, now) for g in sampler.groups])

    @property
    def replaced_topics(self) -> list[str]:
        """Topics whose incarnation is not the one this data dir last worked with."""
        return SeenIncarnations(self.settings.storage.data_dir).replaced(self.now.incarnations)

    @property
    def beyond_end(self) -> list[str]:
        return [f"{row.name} on {p['topic']}[{p['partition']}] ({p['committed']} > {p['end']})"
                for row in self.rows for p in row.partitions if p.get("beyond_end")]

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.settings.kafka.topic_prefix, "bootstrap_servers": self.settings.kafka.bootstrap_servers,
            "time": self.now.at, "rate_window_s": round(self.now.at - self.before.at, 2),
            "incarnations": {"topics": self.now.incarnations, "not_seen_by_data_dir": self.replaced_topics,
                             "committed_beyond_end": self.beyond_end},
            "workers": [{"pid": w.entry.pid, "host": w.entry.host, "url": w.entry.url, "stages": w.entry.stages,
                         "reachable": w.samples is not None} for w in self.now.workers],
            "stages": [row.to_json() for row in self.rows],
        }

    def table(self) -> str:
        cells = [COLUMNS, *(_cells(row) for row in self.rows)]
        widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
        lines = ["  ".join(c.ljust(w) if i in (0, len(COLUMNS) - 1) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]
        clock = time.strftime("%H:%M:%S", time.localtime(self.now.at))
        head = (f"synthstream status: prefix {self.settings.kafka.topic_prefix} on "
                f"{self.settings.kafka.bootstrap_servers} at {clock}; rates over {self.now.at - self.before.at:.1f}s")
        notes = []
        if replaced := self.replaced_topics:
            notes.append(replaced_line(self.settings.kafka.bootstrap_servers, replaced, self.settings.kafka.topic_prefix))
        if beyond := self.beyond_end:
            notes.append("committed offsets beyond the topic end (" + "; ".join(beyond) + "): committed on an earlier "
                         "incarnation of the topic; the stage's next worker reads the new one from its beginning")
        return "\n".join([head, "", *lines, "", self._workers_line(), *notes])

    def _workers_line(self) -> str:
        if not self.now.workers:
            return f"in flight, LLM calls, tokens, 429s: {NO_WORKERS}"
        parts = [f"pid {w.entry.pid} ({', '.join(w.entry.stages)}) "
                 + (w.entry.url if w.samples is not None else "did not answer") for w in self.now.workers]
        return "workers serving metrics: " + "; ".join(parts)


def _cells(row: Figures) -> tuple[str, ...]:
    # "-": does not apply (the sink makes no records); "n/a": no worker of the stage serves metrics.
    stage_only = "-" if row.kind == "sink" else "n/a"
    llm = row.llm or {}
    return (
        row.name, str(row.lag), str(row.consumed), f"{row.in_rate:.1f}",
        _num(row.produced, "-"), "-" if row.out_rate is None else f"{row.out_rate:.1f}",
        _num(row.in_flight, stage_only), _num(row.dlq, "-"), _num(row.rejected, "-"),
        _num(llm.get("requests"), stage_only), _num(llm.get("tokens"), stage_only),
        _num(llm.get("rate_limited"), stage_only), _partition_lags(row),
    )


def _num(value: int | None, missing: str) -> str:
    return missing if value is None else str(value)


def _partition_lags(row: Figures) -> str:
    """Partitions with a lag: p0=3 for a single input topic, topic[0]=3 when a group reads several."""
    several = len({p["topic"] for p in row.partitions}) > 1
    def where(p: dict[str, Any]) -> str:
        return f"{p['topic']}[{p['partition']}]" if several else f"p{p['partition']}"

    return " ".join(f"{where(p)}={p['lag']}" + ("(beyond end)" if p.get("beyond_end") else "")
                    for p in row.partitions if p["lag"] or p.get("beyond_end"))


async def run_status(settings: Settings, *, interval: float, watch: bool, as_json: bool,
                     out: TextIO = sys.stdout) -> None:
    """Print the status once (two samples `interval` apart), or every `interval` until stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redraw = watch and out.isatty() and not as_json
    async with Sampler(settings) as sampler:
        before = await sampler.sample()
        while not await sleep_until(stop, interval):
            now = await sampler.sample()
            status = Status.between(sampler, before, now)
            if as_json:
                text = orjson.dumps(status.to_json(), option=0 if watch else orjson.OPT_INDENT_2).decode()
            else:
                text = status.table() + ("\n" if watch and not redraw else "")
            out.write(("\033[H\033[2J" if redraw else "") + text + "\n")
            out.flush()
            if not watch:
                return
            before = now
