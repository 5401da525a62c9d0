"""Losing the broker: stored data is never touched, workers fail fast and quietly, a refeed
resumes only unfinished work. Real broker processes (killed and restarted here), real worker
processes, the simulator over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from consumers import TOPICS
from consumers.payloads import ScoredInstruction
from consumers.rubric import Judgement
from helpers import (
    checksums,
    endings,
    envelopes,
    expected_ids,
    make_texts,
    produce,
    simulator_requests,
    stop_process,
    stored_rows,
    wait_for,
    write_jsonl,
    write_seeds,
)
from streamer.kafka.broker import EmbeddedBroker
from streamer.processes import free_port
from streamer.kafka.incarnation import incarnations, short
from streamer.records import Envelope, Sample, new_root

pytestmark = pytest.mark.slow

BOOTSTRAP = "SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"


@pytest.fixture
def own_broker(pipeline) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, on a port it keeps, so the test can kill and restart it."""
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    pipeline.env[BOOTSTRAP] = broker.bootstrap_servers
    yield broker
    broker.stop()


def restart(broker: EmbeddedBroker) -> None:
    """A new broker process on the same address: empty, like any restarted embedded broker."""
    broker.stop()
    broker.start()


def kill(broker: EmbeddedBroker) -> None:
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGKILL)
    broker.process.wait(timeout=10)


def feed(pipeline, where: Path, texts: list[str], seeds: int) -> str:
    where.mkdir(exist_ok=True)
    out = pipeline.cli("feed", "seeds", str(write_seeds(where / "seeds.jsonl", seeds))).stderr.decode()
    return out + pipeline.cli("feed", "docs", str(write_jsonl(where / "docs.jsonl", texts))).stderr.decode()


def scored(text: str) -> Envelope:
    return new_root(ScoredInstruction(instruction=text, judgement=Judgement(analysis="ok", scores={}, total=5)))


def test_broker_restart_touches_no_stored_file_and_dedup_remembers_the_earlier_run(
        pipeline, own_broker, start_simulator, tmp_path):
    sim = start_simulator()
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__DEDUP__THRESHOLD": "0.9"})
    texts = make_texts(24)
    run_a, run_b = texts[:12], texts[12:]
    feed(pipeline, tmp_path / "a", run_a, seeds=4)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
    store = pipeline.data_dir / "store"
    stored_a = checksums(store)
    samples_a = envelopes(pipeline, "samples")
    assert samples_a and set(endings(pipeline)) == expected_ids(run_a)
    # Files are named by the topic ids the broker gave (tansu has them).
    ids_a = asyncio.run(incarnations(pipeline.settings(), ["samples"]))
    assert all(f"-i{short(ids_a['samples'])}-" in p.name for p in stored_a if "samples" in p.parent.name)

    restart(own_broker)
    fed = feed(pipeline, tmp_path / "b", run_b, seeds=4)
    assert "not the ones this data dir last worked with" in fed, fed
    assert "4 already finished in the store not sent again" in fed, fed  # the seeds of run A
    # A near-duplicate of an instruction run A kept, as the judge would hand it on.
    kept = samples_a[0]
    near = scored(kept["data"]["instruction"].rstrip(".?!") + ", please?")
    produce(own_broker.bootstrap_servers, pipeline.prefix + "instructions.scored", [near])
    run = pipeline.cli("run", "--until-idle", "--no-progress", timeout=240).stderr.decode()
    assert re.search(r"state \S+dedup: its snapshot \(\d+ entries\) was taken on an earlier incarnation", run), run
    assert "seeds.attributed: loaded 4 records (4 from the store" in run, run

    after = checksums(store)
    assert {p: after.get(p) for p in stored_a} == stored_a, "a file of run A was changed or removed"
    assert len(after) > len(stored_a)
    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended
    rejected = [r for r in envelopes(pipeline, "rejected") if r["root_id"] == near.root_id]
    assert len(rejected) == 1 and rejected[0]["data"]["stage"] == "dedup", rejected
    assert kept["parent_id"] in rejected[0]["data"]["reason"], rejected[0]["data"]["reason"]

    exported = tmp_path / "dataset.jsonl"
    pipeline.cli("export", "--out", str(exported))
    rows = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows) == len(envelopes(pipeline, "samples"))


def test_marker_incarnations_keep_a_restarted_brokers_records_apart(pipeline, own_broker, tmp_path):
    """The fallback for brokers without topic ids: a token on the prefix's marker topic names the
    incarnation; the sink's files of the same offsets never collide across a restart."""
    pipeline.env["SYNTHSTREAM_KAFKA__TOPIC_IDENTITY"] = "marker"

    def store_samples(n: int, first: int) -> None:
        asyncio.run(_ensure(pipeline))
        produce(own_broker.bootstrap_servers, pipeline.prefix + "samples",
                [new_root(Sample(instruction=f"question {i}", response=f"answer {i}")) for i in range(first, first + n)])
        pipeline.cli("run", "--stage", "sink", "--until-idle", "--no-progress", timeout=120)

    store_samples(6, 0)
    marker_a = asyncio.run(incarnations(pipeline.settings(), ["samples"]))["samples"]
    first = checksums(pipeline.data_dir / "store")
    assert first and all(f"-i{short(marker_a)}-" in p.name for p in first)
    restart(own_broker)
    store_samples(6, 100)  # offsets 0.. again, other records
    marker_b = asyncio.run(incarnations(pipeline.settings(), ["samples"]))["samples"]
    assert marker_b != marker_a
    after = checksums(pipeline.data_dir / "store")
    assert {p: after.get(p) for p in first} == first
    stored = [r["envelope"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples")]
    assert len(stored) == 12 and len(set(stored)) == 12


async def _ensure(pipeline) -> None:
    from streamer.kafka.clients import ensure_topics

    await ensure_topics(pipeline.settings(), TOPICS)


def test_dead_broker_ends_workers_quietly_and_a_resumed_feed_sends_only_unfinished_work(
        pipeline, own_broker, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.3")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_KAFKA__UNAVAILABLE_TIMEOUT": "8",
                         "SYNTHSTREAM_RUNTIME__DRAIN_TIMEOUT": "5", "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "3"})
    texts = make_texts(30)
    feed(pipeline, tmp_path, texts, seeds=4)
    worker = pipeline.start("run", "--until-idle", "--no-progress", name="worker")
    other = pipeline.start("run", "--stage", "attribution", "--no-progress", name="other")
    wait_for(lambda: len(envelopes(pipeline, "samples")) >= 5, 120, what="first samples stored")

    kill(own_broker)
    killed_at = time.monotonic()
    lines_before = len(pipeline.log_of(worker).splitlines())
    time.sleep(3)  # both are reconnecting now
    stop_process(other, signal.SIGTERM, timeout=30)
    assert time.monotonic() - killed_at - 3 <= 5 + 2, "SIGTERM while reconnecting took longer than the drain timeout"

    code = worker.wait(timeout=8 + 10 + 10)
    took = time.monotonic() - killed_at
    log = pipeline.log_of(worker)
    assert code != 0 and took <= 8 + 10, (code, took, log[-3000:])
    assert f"broker {own_broker.bootstrap_servers} unreachable" in log, log[-3000:]
    quiet = len(log.splitlines()) - lines_before
    assert quiet / took <= 5, f"{quiet} lines in {took:.0f}s while the broker was away:\n{log[-4000:]}"

    stored_before = set(endings(pipeline))
    assert 0 < len(stored_before) < len(texts), "the broker must die mid-run for this test to mean anything"
    asked_before = len(simulator_requests(sim.url))

    own_broker.start()  # a fresh broker, empty
    fed = feed(pipeline, tmp_path, texts, seeds=4)  # resuming is the default
    finished = [int(n) for n in re.findall(r"(\d+) already finished in the store", fed)]
    assert sum(finished) >= len(stored_before), fed
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)

    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended
    asked_after = simulator_requests(sim.url)[asked_before:]
    done_notes = {f"Note {i} about the " for i, text in enumerate(texts) if expected_ids([text]) <= stored_before}
    redone = [m["content"] for r in asked_after for m in r["messages"] if any(n in m["content"] for n in done_notes)]
    assert not redone, redone[:2]


def test_a_worker_outliving_its_broker_stops_and_never_commits_to_the_new_one(
        pipeline, own_broker, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.3")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_RUNTIME__DRAIN_TIMEOUT": "5",
                         "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "3"})
    texts = make_texts(24)
    feed(pipeline, tmp_path, texts, seeds=4)
    worker = pipeline.start("run", "--no-progress", name="worker")
    wait_for(lambda: len(envelopes(pipeline, "samples")) >= 3, 120, what="first samples stored")

    restart(own_broker)  # same port, a new process with nothing in it
    restarted_at = time.monotonic()
    code = worker.wait(timeout=30)
    log = pipeline.log_of(worker)
    assert code != 0, log[-3000:]
    assert time.monotonic() - restarted_at < 20
    assert re.search(r"topic \S+ on \S+ (is gone|was recreated)", log), log[-3000:]
    assert "fatal error" not in log, log[-3000:]

    groups = asyncio.run(_committed_groups(own_broker.bootstrap_servers, pipeline.prefix))
    assert not groups, f"offsets committed to the new broker: {groups}"

    feed(pipeline, tmp_path, texts, seeds=4)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended


async def _committed_groups(bootstrap: str, prefix: str) -> dict[str, dict]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = {}
        for group, _ in await admin.list_consumer_groups():
            if group.startswith(prefix):
                offsets = await admin.list_consumer_group_offsets(group)
                if offsets:
                    found[group] = offsets
        return found
    finally:
        await admin.close()


def test_offsets_committed_beyond_a_topics_end_are_named_and_the_new_topic_read_from_its_start(pipeline, broker):
    """A group's committed offset past the end (committed on an earlier incarnation of the topic):
    status names it, and the next worker says so in one line and reads the topic from offset 0."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    asyncio.run(_ensure(pipeline))
    samples = [new_root(Sample(instruction=f"question {i}", response=f"answer {i}")) for i in range(3)]
    produce(broker.bootstrap_servers, pipeline.prefix + "samples", samples)

    async def commit_far_ahead() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=pipeline.prefix + "sink",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(pipeline.prefix + "samples", p) for p in range(4)]
            consumer.assign(tps)
            await consumer.commit({tp: 500 for tp in tps})
        finally:
            await consumer.stop()

    asyncio.run(commit_far_ahead())
    status = orjson.loads(pipeline.cli("status", "--json", "--interval", "0.5").stdout)
    beyond = status["incarnations"]["committed_beyond_end"]
    assert any(f"sink on {pipeline.prefix}samples[" in b and "500 >" in b for b in beyond), beyond

    run = pipeline.cli("run", "--stage", "sink", "--until-idle", "--no-progress", timeout=120).stderr.decode()
    assert re.search(r"sink: committed offsets lie beyond the end of .*samples\[\d\]", run), run
    stored = {r["id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples")}
    assert stored == {s.id for s in samples}


def test_feed_taxonomy_after_a_broker_restart_says_the_topic_is_new_and_sends_again(pipeline, own_broker):
    first = pipeline.cli("feed", "taxonomy", "--only", "Statistics").stderr.decode()
    assert "fed 1 discipline" in first, first
    again = pipeline.cli("feed", "taxonomy", "--only", "Statistics").stderr.decode()
    assert "fed 0 disciplines" in again and "1 already on the topic" in again, again
    restart(own_broker)
    after = pipeline.cli("feed", "taxonomy", "--only", "Statistics").stderr.decode()
    assert "not the ones this data dir last worked with" in after, after
    assert "fed 1 discipline" in after and "the topic is newer than this data dir's store" in after, after


def test_dead_letters_of_a_lost_broker_are_listed_from_the_store_and_redriven_once(pipeline, own_broker):
    from consumers.payloads import Instruction
    from helpers import read_topic
    from streamer.records import DeadLetter, derived_id

    asyncio.run(_ensure(pipeline))
    inputs = [new_root(Instruction(instruction=f"How do I fix leak number {i}?")) for i in range(2)]
    letters = []
    for i, original in enumerate(inputs):
        letter = DeadLetter(stage="judge", input_topic=pipeline.prefix + "instructions", partition=0, offset=i,
                            error="LLM endpoint unavailable", error_type="LLMUnavailableError", attempts=3,
                            input=original.model_dump(mode="json"))
        letters.append(Envelope(id=derived_id(original.id, "judge", "v", "dlq"), kind=DeadLetter.kind,
                                root_id=original.root_id, parent_id=original.id, lineage=original.lineage,
                                data=letter.model_dump(mode="json")))
    produce(own_broker.bootstrap_servers, pipeline.prefix + "dlq", letters)
    pipeline.cli("run", "--stage", "sink", "--until-idle", "--no-progress", timeout=120)

    restart(own_broker)
    listed = pipeline.cli("dlq", "list")
    rows = listed.stdout.decode().splitlines()[1:]
    assert len(rows) == 2 and all("pending*" in row for row in rows), rows
    assert "only in the store" in listed.stderr.decode()

    redriven = pipeline.cli("dlq", "redrive").stderr.decode()
    assert "redrove 2 dead letters" in redriven, redriven
    back = read_topic(own_broker.bootstrap_servers, pipeline.prefix + "instructions")
    assert sorted(r["id"] for r in back) == sorted(e.id for e in inputs)
    # The markers are stored too: after yet another broker loss the letters stay redriven.
    pipeline.cli("run", "--stage", "sink", "--until-idle", "--no-progress", timeout=120)
    restart(own_broker)
    again = pipeline.cli("dlq", "redrive").stderr.decode()
    assert "redrove 0 dead letters" in again and "2 were redriven before" in again, again
