"""`synthstream demo`: the whole pipeline offline on the bundled examples.

Embedded broker (unless Kafka is configured) + LLM simulator (unless an endpoint is
configured) → feed examples → run every stage and the sink until idle → export.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.clients import kafka_available
from streamer.storage.export import export_samples, iter_stored

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def run_demo(settings: Settings, *, docs: Path | None, seeds: Path | None, out: Path | None,
             latency: float = 0.2) -> int:
    docs = docs or EXAMPLES / "docs"
    seeds = seeds or EXAMPLES / "seeds.jsonl"
    for path in (docs, seeds):
        if not path.exists():
            say(f"input {path} does not exist")
            return 2
    demo_dir = settings.storage.data_dir / "demo"
    if demo_dir.exists():
        # The embedded broker starts empty, so an old store would not match its offsets.
        shutil.rmtree(demo_dir)
    settings.storage.data_dir = demo_dir
    out = out or demo_dir / "dataset.jsonl"
    with kafka_available(settings, "the demo") as ready:
        return asyncio.run(_demo(ready, docs, seeds, out, latency))


async def _demo(settings: Settings, docs: Path, seeds: Path, out: Path, latency: float) -> int:
    from consumers import PIPELINE
    from producers.feed import feed
    from streamer.llm.simulator import SIMULATOR_MODEL, SimulatorSettings, start_simulator
    from streamer.worker import Worker

    simulator = None
    if not settings.llm.base_url:
        simulator, port = await start_simulator(SimulatorSettings(port=0, latency=latency))
        settings.llm.base_url = f"http://127.0.0.1:{port}/v1"
        settings.llm.model = SIMULATOR_MODEL
        settings.llm.requests_per_minute = 6000
        say(f"no LLM endpoint configured: using the simulator at {settings.llm.base_url} "
            f"({latency:.2f}s per call); its outputs are marked simulated")
        judge = settings.stages.setdefault("judge", {})
        if "threshold" not in judge:
            # Simulated rubric scores are noise: filtering on them would drop documents at random.
            judge["threshold"] = 0
            say("the simulator's rubric scores are random, so the judge keeps everything "
                "(set stages.judge.threshold to filter)")
    try:
        doc_report = await feed(settings, "docs", [str(docs)])
        say(doc_report.summary())
        seed_report = await feed(settings, "seeds", [str(seeds)])
        say(seed_report.summary())
        # Seeds first: their attributions are the worked examples every document is matched against.
        seeding = [s for s in PIPELINE if s.input_topic == "seeds"]
        say(f"attributing seeds ({', '.join(s.name for s in seeding)})")
        await Worker(settings, seeding, sink=True, until_idle=True).run()
        say(f"running stages {', '.join(s.name for s in PIPELINE)} and the sink until all input is processed")
        await Worker(settings, PIPELINE, sink=True, until_idle=True).run()
    finally:
        if simulator is not None:
            await simulator.cleanup()

    prefix = settings.kafka.topic_prefix
    result = export_samples(settings.storage.store_dir, f"{prefix}samples", out)
    dead = sum(1 for _ in iter_stored(settings.storage.store_dir, f"{prefix}dlq"))
    calls = {s.name: metrics.total(metrics.LLM_REQUESTS, stage=s.name) for s in PIPELINE}
    per_sample = max(result.rows, 1)
    say("LLM requests by stage (per exported sample): " + ", ".join(
        f"{k} {v:.0f} ({v / per_sample:.2f})" for k, v in calls.items() if v))
    rejected = sum(1 for _ in iter_stored(settings.storage.store_dir, f"{prefix}rejected"))
    say(f"dataset: {out} ({result.rows} rows from {doc_report.sent} documents and {seed_report.sent} seeds; "
        f"{rejected} rejected, {dead} records in dlq)")
    print(out)
    return 0
