"""`synthstream estimate`: calls, tokens, cost and time of a run, before it, from a sample of its inputs.

A sample of the documents (default 20, spread over the input) and of the seeds goes through the real
stages in this process — their prompts, their LLM calls to the configured endpoints (or the simulator),
their encoder, dedup — every call online and uncached, so each one is measured. Per stage the calls and
tokens per input record are scaled to the whole input (seeds for `attribution`, documents for the rest)
and priced at `[prices]`, online and in the batch lane; the time is what the configured limits allow
(`concurrency` records at the sample's seconds per call, `requests_per_minute`, `tokens_per_minute`),
stages running side by side as the workers do. Batch-lane time is the provider's window (24 h at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from streamer import metrics
from streamer.config import Settings
from streamer.llm.client import LLMPool
from streamer.llm.prices import Prices
from streamer.ops.units import duration, usd
from streamer.records import Envelope
from streamer.runtime.processor import RecordProcessor, Source
from streamer.runtime.testing import StaticTable

BATCH_WINDOW_S = 24 * 3600


@dataclass
class StageEstimate:
    stage: str
    mode: str  # as configured: online | batch
    model: str
    sampled: int  # input records of the sample
    total: int  # input records of the whole run (scaled from the sample)
    calls: float
    prompt_tokens: float
    completion_tokens: float
    online_usd: float
    batch_usd: float
    seconds_per_call: float
    online_time_s: float

    @property
    def cost_usd(self) -> float:
        return self.batch_usd if self.mode == "batch" else self.online_usd

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "mode": self.mode, "model": self.model, "sampled": self.sampled,
                "records": self.total, "calls": round(self.calls), "prompt_tokens": round(self.prompt_tokens),
                "completion_tokens": round(self.completion_tokens), "cost_usd": round(self.cost_usd, 6),
                "online_usd": round(self.online_usd, 6), "batch_usd": round(self.batch_usd, 6),
                "seconds_per_call": round(self.seconds_per_call, 3), "online_time_s": round(self.online_time_s, 1)}


@dataclass
class Estimate:
    documents: int
    seeds: int
    sampled_documents: int
    sampled_seeds: int
    simulated: bool
    stages: list[StageEstimate] = field(default_factory=list)
    sample_usd: float = 0.0  # what the sample itself cost
    sample_seconds: float = 0.0

    def totals(self) -> dict[str, float]:
        return {"calls": sum(s.calls for s in self.stages),
                "prompt_tokens": sum(s.prompt_tokens for s in self.stages),
                "completion_tokens": sum(s.completion_tokens for s in self.stages),
                "tokens": sum(s.prompt_tokens + s.completion_tokens for s in self.stages),
                "cost_usd": sum(s.cost_usd for s in self.stages),
                "online_usd": sum(s.online_usd for s in self.stages),
                "batch_usd": sum(s.batch_usd for s in self.stages)}

    def time_s(self) -> dict[str, float]:
        """Stages run side by side: the slowest online stage sets the pace; a batch stage takes its window."""
        online = max((s.online_time_s for s in self.stages), default=0.0)
        configured = max((BATCH_WINDOW_S if s.mode == "batch" else s.online_time_s for s in self.stages
                          if s.calls), default=0.0)
        return {"online_s": online, "configured_s": configured, "batch_window_s": BATCH_WINDOW_S}

    def to_json(self) -> dict[str, Any]:
        totals = self.totals()
        return {"documents": self.documents, "seeds": self.seeds, "sampled_documents": self.sampled_documents,
                "sampled_seeds": self.sampled_seeds, "simulated": self.simulated,
                "stages": [s.to_json() for s in self.stages],
                "total": {k: round(v, 6) if k.endswith("usd") else round(v) for k, v in totals.items()},
                "time": {k: round(v, 1) for k, v in self.time_s().items()},
                "sample": {"cost_usd": round(self.sample_usd, 6), "seconds": round(self.sample_seconds, 1)}}

    def table_lines(self) -> list[str]:
        head = ("stage", "mode", "records", "calls", "prompt tok", "completion tok", "cost", "online", "batch",
                "time online")
        cells = [head]
        for s in self.stages:
            cells.append((s.stage, s.mode, str(s.total), f"{s.calls:.0f}", f"{s.prompt_tokens:.0f}",
                          f"{s.completion_tokens:.0f}", usd(s.cost_usd), usd(s.online_usd), usd(s.batch_usd),
                          duration(s.online_time_s)))
        t = self.totals()
        times = self.time_s()
        cells.append(("total", "", "", f"{t['calls']:.0f}", f"{t['prompt_tokens']:.0f}", f"{t['completion_tokens']:.0f}",
                      usd(t["cost_usd"]), usd(t["online_usd"]), usd(t["batch_usd"]), duration(times["online_s"])))
        widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in cells]
        configured = ("within the batch window (24 h at most) for the stages in batch mode"
                      if any(s.mode == "batch" for s in self.stages) else duration(times["configured_s"]))
        lines += ["", f"{self.documents} documents and {self.seeds} seeds, estimated from {self.sampled_documents} "
                      f"documents and {self.sampled_seeds} seeds"
                      + (" on the simulator" if self.simulated else "") + f" (the sample cost {usd(self.sample_usd)}, "
                      f"{self.sample_seconds:.0f}s)",
                  f"cost as configured {usd(t['cost_usd'])}; all online {usd(t['online_usd'])}, all in the batch "
                  f"lane {usd(t['batch_usd'])}; time as configured: {configured}"]
        return lines




def spread(records: list[Envelope], n: int) -> list[Envelope]:
    """n records spread evenly over the input (its start alone may not look like the rest)."""
    if len(records) <= n:
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


async def estimate(settings: Settings, stages: list[Any], inputs: dict[str, list[Envelope]],
                   sample_size: int, *, simulate: bool = False) -> Estimate:
    """Run a sample of `inputs` (topic -> every root record the feed would send) through `stages`."""
    sample = {topic: spread(records, sample_size) for topic, records in inputs.items()}
    result = Estimate(documents=len(inputs.get("docs", [])), seeds=len(inputs.get("seeds", [])),
                      sampled_documents=len(sample.get("docs", [])), sampled_seeds=len(sample.get("seeds", [])),
                      simulated=simulate)
    prices = Prices(settings.prices)
    async with contextlib.AsyncExitStack() as stack:
        if simulate:
            await stack.enter_async_context(_simulated(settings, [s.name for s in stages]))
        pool = LLMPool(None, prices)
        stack.push_async_callback(pool.close)
        started = time.monotonic()
        outputs: dict[str, list[Envelope]] = {topic: list(records) for topic, records in sample.items()}
        for stage in stages:
            records = outputs.get(stage.input_topic, [])
            made, stage_estimate = await _run_stage(settings, stage, records, outputs, pool, prices,
                                                    scale_of(stage.input_topic, inputs, sample))
            result.stages.append(stage_estimate)
            for envelope, topic in made:
                outputs.setdefault(topic, []).append(envelope)
        result.sample_seconds = time.monotonic() - started
    result.sample_usd = sum(metrics.total(metrics.LLM_COST, stage=s.name) for s in stages)
    return result


def scale_of(topic: str, inputs: dict[str, list[Envelope]], sample: dict[str, list[Envelope]]) -> float:
    """Records of the whole run per record of the sample, by the root input a stage's records come from."""
    root = "seeds" if topic.startswith("seeds") else "docs"
    return len(inputs.get(root, [])) / max(1, len(sample.get(root, [])))


async def _run_stage(settings: Settings, stage: Any, records: list[Envelope], outputs: dict[str, list[Envelope]],
                     pool: LLMPool, prices: Prices, scale: float) -> tuple[list[tuple[Envelope, str]], StageEstimate]:
    bound = stage.bind(settings)
    llm = bound.settings.llm
    mode = llm.mode
    llm.mode = "online"  # every sampled call is made now, to be measured
    resources = await bound.resources_in_process()
    tables = {name: StaticTable(outputs.get(name, []), model) for name, model in stage.tables.items()}
    processor = RecordProcessor(bound, pool.client(llm, stage.name), retry_backoff=0.05, tables=tables,
                                resources=lambda: resources)
    room = asyncio.Semaphore(bound.settings.concurrency)
    source = Source(settings.kafka.topic_prefix + stage.input_topic, 0, 0)

    async def one(envelope: Envelope) -> list[tuple[Envelope, str]]:
        async with room:
            return [(out.envelope, out.topic) for out in await processor.process(envelope.to_bytes(), source)]

    started = time.monotonic()
    made = [pair for outs in await asyncio.gather(*(one(r) for r in records)) for pair in outs]
    elapsed = time.monotonic() - started
    if stage.state is not None and hasattr(resources, "close"):
        with contextlib.suppress(Exception):
            resources.close()
    calls = sum(metrics.total(metrics.LLM_REQUESTS, stage=stage.name, outcome=o) for o in metrics.REQUEST_OUTCOMES)
    prompt = metrics.total(metrics.LLM_TOKENS, stage=stage.name, kind="prompt")
    completion = (metrics.total(metrics.LLM_TOKENS, stage=stage.name, kind="completion")
                  + metrics.total(metrics.LLM_TOKENS, stage=stage.name, kind="reasoning"))
    # Seconds per call as the sample saw them: the stage's time over its calls, `concurrency` at once.
    seconds_per_call = elapsed * min(bound.settings.concurrency, max(1, len(records))) / calls if calls else 0.0
    total_calls, total_prompt, total_completion = calls * scale, prompt * scale, completion * scale
    estimate = StageEstimate(
        stage=stage.name, mode=mode, model=llm.model, sampled=len(records), total=round(len(records) * scale),
        calls=total_calls, prompt_tokens=total_prompt, completion_tokens=total_completion,
        online_usd=prices.cost(total_prompt, total_completion, "online", llm.model),
        batch_usd=prices.cost(total_prompt, total_completion, "batch", llm.model),
        seconds_per_call=seconds_per_call,
        online_time_s=_online_time(total_calls, total_prompt + total_completion, seconds_per_call, bound.settings),
    )
    return made, estimate


def _online_time(calls: float, tokens: float, seconds_per_call: float, stage_settings: Any) -> float:
    """Seconds the calls take at the stage's limits: its concurrency at the measured seconds per call,
    the endpoint's requests and tokens per minute (when set)."""
    if not calls:
        return 0.0
    llm = stage_settings.llm
    rates = [stage_settings.concurrency / seconds_per_call if seconds_per_call else float("inf")]
    if llm.requests_per_minute:
        rates.append(llm.requests_per_minute / 60)
    if llm.tokens_per_minute and tokens:
        rates.append(llm.tokens_per_minute / 60 / (tokens / calls))
    return calls / min(rates) if min(rates) != float("inf") else 0.0


@contextlib.asynccontextmanager
async def _simulated(settings: Settings, stage_names: list[str]):  # noqa: ANN202 - an async context manager
    """Every stage's calls to an in-process simulator, each keeping its configured model (and so its price)."""
    from streamer.llm.simulator import SimulatorSettings, start_simulator

    runner, port = await start_simulator(SimulatorSettings(port=0))
    url = f"http://127.0.0.1:{port}/v1"
    saved = (settings.llm.base_url, {n: dict(settings.stages.get(n, {}).get("llm", {})) for n in stage_names})
    settings.llm.base_url = url
    for name in stage_names:
        if "base_url" in settings.stages.get(name, {}).get("llm", {}):
            settings.stages[name]["llm"]["base_url"] = url
    try:
        yield url
    finally:
        settings.llm.base_url = saved[0]
        for name, llm in saved[1].items():
            if llm:
                settings.stages[name]["llm"] = llm
        await runner.cleanup()
