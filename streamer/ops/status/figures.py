"""One row of `status` per stage (or the sink), from two samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamer.metrics import REQUEST_OUTCOMES
from streamer.metrics.runs import COUNTERS, OUTCOME_COUNTERS
from streamer.ops.status.sample import Sample, Watched


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
    llm: dict[str, float] | None
    waiting: str | None = None  # what the stage waits for, when a live worker says it is stalled

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
            "waiting": self.waiting,
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


def worker_figures(group: Watched, s: Sample) -> tuple[int | None, dict[str, float] | None]:
    """In-flight records (live workers only) and LLM usage: the counters are totals of the
    pipeline run (live workers' scrapes + earlier and unreachable runs' files), the gauges live."""
    if not group.is_stage:
        return None, None
    serving = [w for w in s.workers if w.samples is not None and group.name in w.entry.stages]
    past = s.past.get(group.name)
    if not serving and past is None:
        return None, None

    def live(name: str, **labels: str) -> float:
        return sum(w.total(name, stage=group.name, **labels) for w in serving)

    counters = dict.fromkeys(COUNTERS, 0.0) if past is None else dict(past)
    counters["requests"] += sum(live("synthstream_llm_requests_total", outcome=o) for o in REQUEST_OUTCOMES)
    for outcome, counter in OUTCOME_COUNTERS.items():  # 429s, cache hits, truncated, invalid, context cuts
        counters[counter] += live("synthstream_llm_requests_total", outcome=outcome)
    counters["tokens"] += live("synthstream_llm_tokens_total")
    # Waiting on this process's own limits, not on the server: seconds so far, calls now.
    counters["limiter_wait_s"] += live("synthstream_llm_limiter_wait_seconds_total")
    counters["cost_usd"] += live("synthstream_llm_cost_usd_total")
    counters["batch_cost_usd"] += live("synthstream_llm_cost_usd_total", lane="batch")
    if (batches := s.batches.get(group.name)) is not None:
        # The batch records price every collected batch once and survive a SIGKILL: they win over the counters.
        counters["cost_usd"] += batches["cost_usd"] - counters["batch_cost_usd"]
        counters["batch_cost_usd"] = batches["cost_usd"]
    exact = ("limiter_wait_s", "cost_usd", "batch_cost_usd")
    llm: dict[str, float] = {k: int(v) for k, v in counters.items() if k not in exact}
    llm["limiter_wait_s"] = round(counters["limiter_wait_s"], 1)
    llm["cost_usd"] = round(counters["cost_usd"], 6)
    llm["batch_cost_usd"] = round(counters["batch_cost_usd"], 6)
    llm["limiter_waiting"] = int(live("synthstream_llm_limiter_waiting"))
    return (int(live("synthstream_stage_in_flight")) if serving else None), llm


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
        in_flight=in_flight, llm=llm, waiting=now.waiting.get(group.name),
    )


def _tallied(s: Sample, topic: str | None, stage: str) -> int | None:
    return s.tallies[topic][stage] if topic in s.tallies else None


