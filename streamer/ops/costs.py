"""What a pipeline's LLM calls cost so far, per stage and in total, without a broker: the worker runs'
counters on disk (streamer.metrics.runs) and, for the batch lane, the batch records (streamer.llm.batch),
which price each collected batch once. For the report and the dataset card; `status` adds live scrapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.config import Settings
from streamer.llm.batch import batch_costs
from streamer.metrics.runs import counted_runs


def run_costs(settings: Settings, data_dir: Path | None = None) -> dict[str, Any]:
    """{"stages": {stage: {requests, tokens, cost_usd, batch_cost_usd}}, "total_usd", "batch_usd"}: every
    worker run of this data dir and topic prefix (a live run as of its last write, at most 2 s old)."""
    if data_dir is not None and data_dir != settings.storage.data_dir:
        settings = settings.model_copy(deep=True)
        settings.storage.data_dir = data_dir
    counters, _, _ = counted_runs(settings, set())
    batches = batch_costs(settings.storage.data_dir, settings.kafka.topic_prefix)
    stages: dict[str, dict[str, float]] = {}
    for stage in sorted(set(counters) | set(batches)):
        c = counters.get(stage, {})
        batch = batches[stage]["cost_usd"] if stage in batches else float(c.get("batch_cost_usd", 0.0))
        online = float(c.get("cost_usd", 0.0)) - float(c.get("batch_cost_usd", 0.0))
        if not (c.get("requests") or c.get("cache_hits") or batch or online):
            continue
        stages[stage] = {"requests": int(c.get("requests", 0)), "tokens": int(c.get("tokens", 0)),
                         "cost_usd": round(online + batch, 6), "batch_cost_usd": round(batch, 6)}
    return {"stages": stages, "total_usd": round(sum(s["cost_usd"] for s in stages.values()), 6),
            "batch_usd": round(sum(s["batch_cost_usd"] for s in stages.values()), 6)}
