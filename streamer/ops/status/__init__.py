"""`synthstream status`: where the pipeline stands, per stage, read from Kafka and the workers.

From Kafka, without joining any group: each stage's committed offsets (a consumer carrying the
stage's group id that never subscribes can ask the coordinator for them, which moves nothing)
against the end offsets of its input topic give the lag per partition and the records consumed;
end offsets of the topics only that stage writes give what it produced. Topics several stages
write (`instructions`, `rejected`, `dlq`) are read and each record is counted for the stage that
wrote it (the last stamp of its lineage; a dead letter's `data.stage`). Rates are differences
between two samples.

From the workers: in-flight records and LLM requests, tokens, 429s and the time LLM calls waited on
the process's own limits (pacing, token budget, in-flight cap) exist only inside worker
processes, so they are scraped from the metrics endpoints the workers registered
(streamer.metrics.endpoint); without one they are n/a. The counters (LLM calls, tokens, 429s,
limiter wait) are totals of the pipeline run: every worker process keeps its counters on disk
(streamer.metrics.runs), and runs that ended, did not answer or serve no endpoint are added from
there, so a restarted worker does not reset them. A stalled stage's worker says what it waits for
(streamer.runtime.progress), shown under the table.

Other modules (the web console) call `sample_status`, or keep a `Sampler` open and build
`Status.between(...)` from two samples; `Status.to_json()` is what `status --json` prints.

Incarnations: a committed offset beyond its topic's end was committed on an earlier incarnation of
the topic (its next worker starts the new one from the beginning); topics whose incarnation is not
the one this data dir last worked with are named in one line (a restarted broker).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from streamer.config import Settings
from streamer.kafka.group import sleep_until
from streamer.kafka.incarnation import SeenIncarnations, replaced_line
from streamer.ops.status.figures import Figures, figures
from streamer.ops.status.sample import Sample, Sampler
from streamer.ops.units import usd

NO_WORKERS = "n/a (no worker serving metrics; start workers with --metrics-port)"
COLUMNS = ("stage", "lag", "in", "in/s", "out", "out/s", "in flight", "dlq", "rejected",
           "LLM calls", "tokens", "cost", "429s", "truncated", "limiter wait", "lag by partition")


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
                         "reachable": w.samples is not None, "run": w.entry.run} for w in self.now.workers],
            "counters": {"worker_runs": self.now.past_runs, "live_workers": len(self.now.workers)},
            "cost_usd": self.cost_usd,
            "stages": [row.to_json() for row in self.rows],
        }

    @property
    def cost_usd(self) -> dict[str, float]:
        """What the pipeline's LLM calls cost so far, in total and in the batch lane ([prices])."""
        rows = [row.llm for row in self.rows if row.llm]
        return {"total": round(sum(r.get("cost_usd", 0.0) for r in rows), 6),
                "batch": round(sum(r.get("batch_cost_usd", 0.0) for r in rows), 6)}

    def table(self) -> str:
        cells = [COLUMNS, *(_cells(row) for row in self.rows)]
        widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
        lines = ["  ".join(c.ljust(w) if i in (0, len(COLUMNS) - 1) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]
        clock = time.strftime("%H:%M:%S", time.localtime(self.now.at))
        head = (f"synthstream status: prefix {self.settings.kafka.topic_prefix} on "
                f"{self.settings.kafka.bootstrap_servers} at {clock}; rates over {self.now.at - self.before.at:.1f}s")
        waiting = [f"{row.name}: {row.waiting}" for row in self.rows if row.waiting]
        return "\n".join([head, "", *lines, "", *waiting, self._workers_line(), *self.notes()])

    def notes(self) -> list[str]:
        """Lines about the broker's incarnations: a restarted broker, offsets beyond a topic's end."""
        notes = []
        if replaced := self.replaced_topics:
            notes.append(replaced_line(self.settings.kafka.bootstrap_servers, replaced, self.settings.kafka.topic_prefix))
        if beyond := self.beyond_end:
            notes.append("committed offsets beyond the topic end (" + "; ".join(beyond) + "): committed on an earlier "
                         "incarnation of the topic; the stage's next worker reads the new one from its beginning")
        return notes

    def _workers_line(self) -> str:
        earlier = (f"; LLM counters include {self.now.past_runs} earlier worker run(s)"
                   if self.now.past_runs else "")
        if not self.now.workers:
            what = "in flight" if self.now.past else "in flight, LLM calls, tokens, 429s"
            return f"{what}: {NO_WORKERS}" + earlier
        parts = [f"pid {w.entry.pid} ({', '.join(w.entry.stages)}) "
                 + (w.entry.url if w.samples is not None else "did not answer") for w in self.now.workers]
        return "workers serving metrics: " + "; ".join(parts) + earlier


def _cells(row: Figures) -> tuple[str, ...]:
    # "-": does not apply (the sink makes no records); "n/a": no worker of the stage serves metrics.
    stage_only = "-" if row.kind == "sink" else "n/a"
    llm = row.llm or {}
    return (
        row.name, str(row.lag), str(row.consumed), f"{row.in_rate:.1f}",
        _num(row.produced, "-"), "-" if row.out_rate is None else f"{row.out_rate:.1f}",
        _num(row.in_flight, stage_only), _num(row.dlq, "-"), _num(row.rejected, "-"),
        _num(llm.get("requests"), stage_only), _num(llm.get("tokens"), stage_only),
        _money(llm.get("cost_usd"), stage_only), _num(llm.get("rate_limited"), stage_only),
        _num(llm.get("truncated"), stage_only), _limiter(llm, stage_only), _partition_lags(row),
    )


def _limiter(llm: dict[str, Any], missing: str) -> str:
    """Seconds the stage's LLM calls waited on this process's own limits, and how many wait now."""
    if "limiter_wait_s" not in llm:
        return missing
    now = llm.get("limiter_waiting") or 0
    return f"{llm['limiter_wait_s']:.1f}s" + (f" ({now} now)" if now else "")


def _money(value: float | None, missing: str) -> str:
    return missing if value is None else usd(value)


def _num(value: int | None, missing: str) -> str:
    return missing if value is None else str(value)


def _partition_lags(row: Figures) -> str:
    """Partitions with a lag: p0=3 for a single input topic, topic[0]=3 when a group reads several."""
    several = len({p["topic"] for p in row.partitions}) > 1
    def where(p: dict[str, Any]) -> str:
        return f"{p['topic']}[{p['partition']}]" if several else f"p{p['partition']}"

    return " ".join(f"{where(p)}={p['lag']}" + ("(beyond end)" if p.get("beyond_end") else "")
                    for p in row.partitions if p["lag"] or p.get("beyond_end"))


async def sample_status(settings: Settings, interval: float = 1.0) -> dict[str, Any]:
    """One status as a dict (what `status --json` prints): two samples `interval` seconds apart."""
    async with Sampler(settings) as sampler:
        before = await sampler.sample()
        await asyncio.sleep(interval)
        return Status.between(sampler, before, await sampler.sample()).to_json()


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
