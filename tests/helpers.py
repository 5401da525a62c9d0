"""Plain helpers for the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import orjson

from streamer.records import content_id

CLI = [sys.executable, "-m", "streamer.cli"]

# Brokers the `pipeline` fixture runs on (conftest.engine): the embedded tansu, a 3-node Apache Kafka cluster.
ENGINES = ["tansu", "kafka"]

TOPIC_WORDS = [
    "volcano", "sourdough", "compiler", "glacier", "violin", "mortgage", "orchid", "telescope", "marathon",
    "espresso", "satellite", "tapestry", "algebra", "harbor", "lichen", "turbine", "sonnet", "vaccine",
]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2,
             what: str | Callable[[], str] = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def make_texts(n: int) -> list[str]:
    """n distinct short documents."""
    out = []
    for i in range(n):
        a, b = TOPIC_WORDS[i % len(TOPIC_WORDS)], TOPIC_WORDS[(i * 7 + 3) % len(TOPIC_WORDS)]
        out.append(f"Note {i} about the {a} and the {b}. The {a} matters because of detail number {i * 13}; "
                   f"people who study the {b} often compare it with the {a}.")
    return out


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_bytes(b"".join(orjson.dumps({field: t, "url": f"https://example.org/{i}"}) + b"\n"
                              for i, t in enumerate(texts)))
    return path


def expected_ids(texts: list[str]) -> set[str]:
    return {content_id(t) for t in texts}


def stored_rows(data_dir: Path, topic: str) -> list[dict]:
    from streamer.storage import store

    return list(store.rows(data_dir / "store", topic))


def checksums(store: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*.parquet"))}


def envelopes(pipeline, topic: str) -> list[dict]:
    return [orjson.loads(r["envelope"]) for r in stored_rows(pipeline.data_dir, pipeline.prefix + topic)]


def endings(pipeline) -> Counter[str]:
    """Per document root: how many times it ended in the store (a sample, a rejection, a dead letter),
    counting each stored id once (export keeps one row per id)."""
    ended: dict[str, str] = {}
    for topic in ("samples", "rejected", "dlq"):
        for env in envelopes(pipeline, topic):
            if (env.get("lineage") or {}).get("document_id"):
                ended[env["id"]] = env["root_id"]
    return Counter(ended.values())


def read_topic(bootstrap: str, topic: str, timeout: float = 10) -> list[dict]:
    """Every record of a topic, read without a consumer group (empty if it does not exist yet)."""
    from streamer.config import load_settings
    from streamer.kafka.positions import FROM_BEGINNING
    from streamer.kafka.reader import UnknownTopicError, observe

    settings = load_settings(env={"SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap})

    async def run() -> list[dict]:
        out: list[dict] = []
        try:
            async with asyncio.timeout(timeout):
                async for record in observe(settings, topic, FROM_BEGINNING, follow=False, stop=asyncio.Event()):
                    out.append(orjson.loads(record.value))
        except UnknownTopicError:
            pass  # not created yet
        except TimeoutError:
            pass  # what arrived in time
        return out

    return asyncio.run(run())


SEED_INSTRUCTIONS = [
    "How do I keep my sourdough starter alive while I'm travelling for two weeks?",
    "Write a Python function that merges overlapping time intervals and explain its complexity.",
    "My landlord wants a 12% rent increase; draft a polite counter-offer email.",
    "Explain why the sky looks red at sunset to a curious ten-year-old.",
    "What should I check on a used car with 120,000 km before buying it?",
    "Summarise the causes of the French Revolution in five bullet points for my exam.",
    "I'm a nurse on night shifts. How can I sleep better during the day?",
    "Compare B-tree and hash indexes for a table queried by date ranges.",
    "Plan a 10K training schedule for a beginner who can run 3 km today.",
    "How do I descale an espresso machine without damaging the seals?",
]


def write_seeds(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"instruction": t}) + b"\n" for t in SEED_INSTRUCTIONS[:n]))
    return path


def produce(bootstrap: str, topic: str, envelopes: list) -> None:
    """Put records straight onto a topic, as an upstream stage would."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for env in envelopes:
                await producer.send_and_wait(topic, env.to_bytes(), key=env.root_id.encode())
        finally:
            await producer.stop()

    asyncio.run(run())


def simulator_requests(url: str) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(url.replace("/v1", "/requests"), timeout=10) as resp:
        return json.load(resp)


# The stages up to instruction, and an instruction endpoint that always fails once (dead letters).
UPSTREAM = ["--stage", "attribution", "--stage", "situation", "--stage", "instruction"]


def dead_letters_at_instruction(pipeline, start_simulator, tmp_path: Path, documents: int) -> list[str]:
    """Feed `documents` documents through the upstream stages with a broken instruction endpoint
    (one attempt, no retries), so each ends as an instruction dead letter; returns the texts."""
    healthy, broken = start_simulator(), start_simulator("--error-rate", "1")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": healthy.url,
                         "SYNTHSTREAM_STAGES__INSTRUCTION__LLM__BASE_URL": broken.url,
                         "SYNTHSTREAM_STAGES__INSTRUCTION__LLM__MAX_RETRIES": "0",
                         "SYNTHSTREAM_STAGES__INSTRUCTION__ATTEMPTS": "1"})
    texts = make_texts(documents)
    pipeline.feed(tmp_path, texts, seeds=3)
    run = pipeline.cli("run", *UPSTREAM, "--stage", "sink", "--until-idle", "--no-progress", timeout=180,
                       check=False)
    # A run whose stage dead-letters all it was given is a failed run, and says so.
    assert run.returncode == 1 and f"instruction dead-lettered all {documents} records" in run.stderr.decode(), \
        run.stderr.decode()[-3000:]
    return texts


def probe_broker(bootstrap: str):
    """One metadata round trip with the project's own BrokerProbe: its cluster id, among others."""
    from streamer.config import KafkaSettings
    from streamer.kafka.topic_ids import BrokerProbe

    probe = BrokerProbe(KafkaSettings(bootstrap_servers=bootstrap))

    async def ask() -> None:
        try:
            await probe.ask([])
        finally:
            probe.close()

    asyncio.run(ask())
    return probe
