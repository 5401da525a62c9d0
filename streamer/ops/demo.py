"""`synthstream demo`: a whole method offline, on bundled inputs.

Embedded broker (unless Kafka is configured) + LLM simulator (unless an endpoint is configured)
→ feed → run the method's stages and the sink until idle → export → per-stage counts, each
checked against what the stage's configuration implies (a mismatch makes the demo fail).

- `--method synthquestions` (default): the documents and seed instructions under examples/.
- `--method glan`: three disciplines of the shipped taxonomy (or `--only`), with small demo sizes
  unless configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.clients import kafka_available
from streamer.ops.export import export_dataset
from streamer.storage import store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the checkout's examples/
# Three disciplines from far-apart fields, so the demo shows the taxonomy's breadth.
GLAN_DEMO_DISCIPLINES = ("Statistics", "Contract law", "Culinary arts")
# Small unless configured: GLAN's own sizes (10 queries, every subject, 10 questions) mean thousands of calls.
GLAN_DEMO_SIZES = {"subjects": {"subject_queries": 2, "max_subjects": 3}, "questions": {"questions_per_syllabus": 4}}

Method = Literal["synthquestions", "glan"]
FED_NOUNS = {"docs": "documents", "seeds": "seeds", "glan.disciplines": "disciplines"}


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


@dataclass
class DemoInputs:
    method: Method = "synthquestions"
    docs: Path | None = None
    seeds: Path | None = None
    taxonomy: Path | None = None
    only: list[str] | None = None
    fed: dict[str, int] = field(default_factory=dict)  # records fed, by topic


def run_demo(settings: Settings, inputs: DemoInputs, *, out: Path | None, latency: float = 0.2) -> int:
    problem = _check_inputs(inputs)
    if problem:
        say(problem)
        return 2
    demo_dir = settings.storage.data_dir / ("demo" if inputs.method == "synthquestions" else f"demo-{inputs.method}")
    if demo_dir.exists():
        # The embedded broker starts empty, so an old store would not match its offsets.
        shutil.rmtree(demo_dir)
    settings.storage.data_dir = demo_dir
    out = out or demo_dir / "dataset.jsonl"
    with kafka_available(settings, "the demo") as ready:
        return asyncio.run(_demo(ready, inputs, out, latency))


def _check_inputs(inputs: DemoInputs) -> str | None:
    from producers.taxonomy import DEFAULT_TAXONOMY, TaxonomyError, load_taxonomy

    if inputs.method == "synthquestions":
        inputs.docs = inputs.docs or EXAMPLES / "docs"
        inputs.seeds = inputs.seeds or EXAMPLES / "seeds.jsonl"
        missing = [p for p in (inputs.docs, inputs.seeds) if not p.exists()]
        return f"input {missing[0]} does not exist" if missing else None
    inputs.taxonomy = inputs.taxonomy or DEFAULT_TAXONOMY
    try:
        taxonomy = load_taxonomy(inputs.taxonomy)
        if not inputs.only:
            inputs.only = (list(GLAN_DEMO_DISCIPLINES) if inputs.taxonomy == DEFAULT_TAXONOMY
                           else [d.name for d in taxonomy.disciplines[:3]])
        taxonomy.select(inputs.only)
    except TaxonomyError as exc:
        return str(exc)
    return None


async def _demo(settings: Settings, inputs: DemoInputs, out: Path, latency: float) -> int:
    from streamer.llm.simulator import simulated_endpoint

    async with contextlib.AsyncExitStack() as stack:
        if not settings.llm.base_url:
            url = await stack.enter_async_context(simulated_endpoint(settings.llm, latency))
            say(f"no LLM endpoint configured: using the simulator at {url} ({latency:.2f}s per call); "
                f"its outputs are marked simulated")
            judge = settings.stages.setdefault("judge", {})
            if "threshold" not in judge:
                # Simulated rubric scores are noise: filtering on them would drop records at random.
                judge["threshold"] = 0
                say("the simulator's rubric scores are random, so the judge keeps everything "
                    "(set stages.judge.threshold to filter)")
        if inputs.method == "glan":
            stages = await _run_glan(settings, inputs)
        else:
            stages = await _run_synthquestions(settings, inputs)
    return _finish(settings, inputs, stages, out)


async def _run_synthquestions(settings: Settings, inputs: DemoInputs) -> list[Any]:
    from consumers import downstream_of
    from producers.feed import feed
    from streamer.runtime.worker import Worker

    doc_report = await feed(settings, "docs", [str(inputs.docs)])
    say(doc_report.summary())
    seed_report = await feed(settings, "seeds", [str(inputs.seeds)])
    say(seed_report.summary())
    inputs.fed = {"docs": doc_report.sent, "seeds": seed_report.sent}
    stages = downstream_of("docs", "seeds")
    # Seeds first: their attributions are the worked examples every document is matched against.
    seeding = [s for s in stages if s.input_topic == "seeds"]
    say(f"attributing seeds ({', '.join(s.name for s in seeding)})")
    await Worker(settings, seeding, sink=True, until_idle=True).run()
    say(f"running stages {', '.join(s.name for s in stages)} and the sink until all input is processed")
    await Worker(settings, stages, sink=True, until_idle=True).run()
    return stages


async def _run_glan(settings: Settings, inputs: DemoInputs) -> list[Any]:
    from consumers import downstream_of
    from producers.taxonomy_feed import feed_taxonomy
    from producers.taxonomy import load_taxonomy
    from streamer.runtime.worker import Worker

    for stage, sizes in GLAN_DEMO_SIZES.items():
        configured = settings.stages.setdefault(stage, {})
        for key, value in sizes.items():
            configured.setdefault(key, value)
    sizes = {f"{stage}.{key}": settings.stages[stage][key] for stage, keys in GLAN_DEMO_SIZES.items() for key in keys}
    say("demo sizes: " + ", ".join(f"{k} = {v}" for k, v in sizes.items()) + " (set stages.NAME.KEY to change)")
    report = await feed_taxonomy(settings, load_taxonomy(inputs.taxonomy), only=inputs.only)
    say(f"{report.summary()}: {', '.join(report.sent)}")
    inputs.fed = {"glan.disciplines": len(report.sent)}
    stages = downstream_of("glan.disciplines")
    say(f"running stages {', '.join(s.name for s in stages)} and the sink until all input is processed")
    await Worker(settings, stages, sink=True, until_idle=True).run()
    return stages


def _finish(settings: Settings, inputs: DemoInputs, stages: list[Any], out: Path) -> int:
    prefix = settings.kafka.topic_prefix
    result = export_dataset(settings, out)
    counts = {s.name: StageCount.measure(s) for s in stages}
    per_sample = max(result.rows, 1)
    say("LLM calls by stage (per exported sample): " + ", ".join(
        f"{name} {c.llm_calls:.0f} ({c.llm_calls / per_sample:.2f})" for name, c in counts.items() if c.llm_calls))
    cost = {s.name: metrics.total(metrics.LLM_COST, stage=s.name) for s in stages}
    if any(cost.values()):  # at [prices]; the simulator is priced as gpt-4o-mini
        say(f"LLM cost ${sum(cost.values()):.4f} at the configured prices: " + ", ".join(
            f"{name} ${usd:.4f}" for name, usd in cost.items() if usd))
    checks = check_counts(settings, stages, counts, inputs.fed)
    say("records by stage (checked against the configuration):")
    for name, count in counts.items():
        ok, rule = checks[name]
        say(f"  {name:<11} {count.describe()}   {'ok' if ok else 'MISMATCH'}: {rule}")
    dead = sum(1 for _ in store.rows(settings.storage.store_dir, f"{prefix}dlq"))
    rejected = sum(1 for _ in store.rows(settings.storage.store_dir, f"{prefix}rejected"))
    fed = " and ".join(f"{n} {FED_NOUNS[topic]}" for topic, n in inputs.fed.items())
    say(f"dataset: {out} ({result.rows} rows from {fed}; {rejected} rejected, {dead} records in dlq)")
    print(out)
    return 1 if any(not ok for ok, _ in checks.values()) else 0


@dataclass
class StageCount:
    """What one stage did in this process, from its metrics."""

    stage: str
    inputs: int
    outputs: dict[str, int]  # by output topic (unprefixed)
    dlq: int
    llm_calls: float

    @classmethod
    def measure(cls, stage: Any) -> StageCount:
        outputs = {t: int(metrics.total(metrics.RECORDS_OUT, stage=stage.name, topic=t)) for t in stage.output_topics}
        answered = sum(metrics.total(metrics.LLM_REQUESTS, stage=stage.name, outcome=o) for o in ("ok", "cache_hit"))
        return cls(stage.name, int(metrics.total(metrics.RECORDS_DONE, stage=stage.name)), outputs,
                   int(metrics.total(metrics.RECORDS_DLQ, stage=stage.name)), answered)

    def out(self, topic: str) -> int:
        return self.outputs.get(topic, 0)

    def describe(self) -> str:
        outs = ", ".join(f"{n} -> {t}" for t, n in self.outputs.items())
        return f"{self.inputs} in, {outs}" + (f", {self.dlq} -> dlq" if self.dlq else "")


def check_counts(settings: Settings, stages: list[Any], counts: dict[str, StageCount],
                 fed: dict[str, int]) -> dict[str, tuple[bool, str]]:
    """Per stage: did every record of the stage before (or of the feed) arrive, and does the
    output count follow from its input and its configuration (the stage's `expect`)?"""
    checks: dict[str, tuple[bool, str]] = {}
    for stage in stages:
        c = counts[stage.name]
        arrived = fed.get(stage.input_topic, 0) + sum(u.out(stage.input_topic) for u in counts.values())
        handled = c.inputs - c.dlq
        produced = sum(c.outputs.values())
        expected = stage.bind(settings).expected(handled)
        ok = (c.inputs == arrived and expected.low <= produced
              and (expected.high is None or produced <= expected.high)
              and (expected.llm_calls is None or c.llm_calls == expected.llm_calls))
        checks[stage.name] = (ok, f"{arrived} arrived; {expected.rule}; made {produced}")
    return checks
