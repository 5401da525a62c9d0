"""Process-wide metrics (Prometheus client objects), read in-process for summaries too."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("synthstream_stage_records_in", "Records a stage started on", ["stage"])
RECORDS_OUT = Counter("synthstream_stage_records_out", "Records a stage produced", ["stage", "topic"])
RECORDS_FAILED = Counter("synthstream_stage_attempts_failed", "Failed processing attempts", ["stage"])
RECORDS_DLQ = Counter("synthstream_stage_records_dlq", "Records sent to the dead-letter topic", ["stage"])
RECORDS_DONE = Counter("synthstream_stage_records_done", "Input records finished (outputs acked)", ["stage"])
IN_FLIGHT = Gauge("synthstream_stage_in_flight", "Records being processed", ["stage"])
LATENCY = Histogram(
    "synthstream_stage_latency_seconds", "Time from start of processing to outputs acknowledged", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
SLOT_REFILL = Histogram(
    "synthstream_stage_slot_refill_seconds", "At the concurrency limit: from a record finishing to the next starting",
    ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CONSUMER_LAG = Gauge("synthstream_consumer_lag", "End offset minus committed offset, per assigned partition",
                     ["stage", "topic", "partition"])

# outcome: ok, rate_limited (HTTP 429), error (5xx, timeouts, other 4xx), truncated (finish_reason=length),
# context_exceeded (a context-length error: the prompt is cut and sent again), invalid_output (an ok reply
# that failed the schema or the content checks: counted again here), reask (such a reply asked again with
# the reason: counted again), cache_hit (no request made).
LLM_REQUESTS = Counter(
    "synthstream_llm_requests", "LLM requests by outcome", ["stage", "endpoint", "model", "outcome"]
)
REQUEST_OUTCOMES = ("ok", "rate_limited", "error", "truncated", "context_exceeded")  # the ones that were HTTP requests
LLM_TOKENS = Counter("synthstream_llm_tokens", "LLM tokens used", ["stage", "endpoint", "model", "kind"])
# Priced by `[prices]` (streamer.llm.prices); lane: online, or batch (at the batch discount).
LLM_COST = Counter("synthstream_llm_cost_usd", "US dollars the answered LLM requests cost",
                   ["stage", "endpoint", "model", "lane"])
# event: submitted, then the state it ended in (completed, failed, expired, cancelled), per batch.
LLM_BATCHES = Counter("synthstream_llm_batches", "Batches of the batch lane, submitted and by final state",
                      ["stage", "event"])
LLM_LATENCY = Histogram(
    "synthstream_llm_latency_seconds", "LLM request latency", ["endpoint", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)

LLM_LIMITER_WAIT = Counter("synthstream_llm_limiter_wait_seconds",
                           "Seconds LLM calls waited on this process's own limits (pacing, tokens, in flight, 429 pause)",
                           ["stage"])
LLM_LIMITER_WAITING = Gauge("synthstream_llm_limiter_waiting", "LLM calls waiting on this process's own limits now",
                            ["stage"])

SINK_ROWS = Counter("synthstream_sink_rows", "Rows written by the sink", ["topic"])


def declare_stages(stages: list[str]) -> None:
    """Create each stage's series at 0, so a scrape shows them (and rates work) before the first event."""
    for stage in stages:
        for metric in (RECORDS_IN, RECORDS_FAILED, RECORDS_DLQ, RECORDS_DONE, IN_FLIGHT, LATENCY):
            metric.labels(stage)


def total(metric: Counter | Gauge, **labels: str) -> float:
    """Sum of a metric's samples whose labels match the given ones (0 if none)."""
    name = metric._name  # noqa: SLF001 - prometheus_client keeps the family name here
    wanted = {f"{name}_total", name}
    value = 0.0
    for family in metric.collect():  # this metric's own samples: the whole registry is far larger (histograms)
        for sample in family.samples:
            if sample.name in wanted and all(sample.labels.get(k) == v for k, v in labels.items()):
                value += sample.value
    return value
