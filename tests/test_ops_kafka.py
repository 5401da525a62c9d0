"""Operating the stream: tap, replay and dead-letter redrive, end to end (real broker, real
simulator over HTTP, real CLI processes)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from datetime import datetime

import orjson
import pytest
from helpers import (
    ENGINES,
    UPSTREAM,
    dead_letters_at_instruction,
    expected_ids,
    make_texts,
    produce,
    read_topic,
    stop_process,
    stored_rows,
    wait_for,
    write_jsonl,
)

from streamer.kafka.admin import committed_offsets
from streamer.kafka.positions import StartAt
from streamer.kafka.reader import positions_on

# Each test on the embedded broker and on a 3-node Apache Kafka cluster.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("engine", ENGINES, indirect=True)]



def committed(pipeline, group: str, topic: str) -> dict[int, int]:
    """A group's committed offsets, read without joining it (0 where it never committed)."""
    found = asyncio.run(committed_offsets(pipeline.settings(), pipeline.prefix + group, pipeline.prefix + topic))
    return {p: offset or 0 for p, offset in found.items()}


def ends(pipeline, topic: str) -> dict[int, int]:
    found = asyncio.run(positions_on(pipeline.settings(), pipeline.prefix + topic, StartAt("end")))
    return {tp.partition: offset for tp, offset in found.items()}


def json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def samples(pipeline) -> list[dict]:
    return [orjson.loads(r["envelope"]) for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples")]


def stage_version(envelope: dict, stage: str) -> str:
    return next(s["version"] for s in envelope["lineage"]["stages"] if s["stage"] == stage)


def test_tap_follows_a_running_stage_without_moving_any_group_offsets(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.5")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "2"})
    texts = make_texts(10)
    pipeline.feed(tmp_path, texts, seeds=3)
    tap = pipeline.start("tap", "situations", "--from-beginning", "--follow", "--json", name="tap")
    worker = pipeline.start("run", *UPSTREAM, "--no-progress", name="worker")

    def tapped() -> list[dict]:
        return json_lines(pipeline.log_of(tap))

    # Live: records show up while the stage is still working through its input.
    wait_for(lambda: 0 < len(tapped()) < len(texts), 90, interval=0.1, what="first situations in the tap")
    wait_for(lambda: len(tapped()) == len(texts), 90, what="every situation in the tap")
    assert {s["root_id"] for s in tapped()} == expected_ids(texts)
    assert all(s["kind"] == "situation" for s in tapped())
    wait_for(lambda: committed(pipeline, "instruction", "situations") == ends(pipeline, "situations"), 60,
             what="instruction stage caught up")
    assert stop_process(worker) == 0

    # The stages processed everything (what they commit without a tap) and kept every partition.
    docs_end, situations_end = ends(pipeline, "docs"), ends(pipeline, "situations")
    assert committed(pipeline, "situation", "docs") == docs_end
    assert committed(pipeline, "instruction", "situations") == situations_end
    log = pipeline.log_of(worker)
    for stage, topic in (("situation", "docs"), ("instruction", "situations")):
        assigned = re.findall(rf"{stage}: assigned partitions (.*)", log)
        assert assigned == [" ".join(f"{pipeline.prefix}{topic}[{p}]" for p in range(4))], assigned
    assert "revoked partitions" not in log

    # More tapping, from any position, changes no group's offsets.
    groups = (("situation", "docs"), ("instruction", "situations"))
    before = [committed(pipeline, g, t) for g, t in groups]
    shown = pipeline.cli("tap", "situations", "--where", "kind=situation")
    assert len(shown.stdout.decode().splitlines()) == len(texts)
    pipeline.cli("tap", "docs", "--offset", "1", "--limit", "3")
    assert [committed(pipeline, g, t) for g, t in groups] == before
    assert stop_process(tap) == 0
    assert f"tap: {len(texts)} records" in pipeline.log_of(tap)


def test_tap_positions_filters_and_an_independent_kafka_client_reads_the_topics(pipeline, tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    texts = make_texts(12)
    path = write_jsonl(tmp_path / "docs.jsonl", texts)
    fed_at = datetime.now().isoformat(timespec="milliseconds")
    pipeline.cli("feed", "docs", str(path))

    every = pipeline.cli("tap", "docs").stdout.decode().splitlines()
    assert len(every) == len(texts)
    assert all(re.match(rf"{re.escape(pipeline.prefix)}docs\[\d\]@\d+  [0-9a-f]{{16}}  document ", line)
               for line in every), every[:2]
    one = json_lines(pipeline.cli("tap", "docs", "--json", "--where", f"data.source={path}:3").stdout.decode())
    assert [d["data"]["text"] for d in one] == [texts[2]]
    assert len(pipeline.cli("tap", "docs", "--limit", "5").stdout.decode().splitlines()) == 5
    assert len(pipeline.cli("tap", "docs", "--since", fed_at).stdout.decode().splitlines()) == len(texts)
    assert pipeline.cli("tap", "docs", "--since", "2100-01-01").stdout == b""
    end = ends(pipeline, "docs")
    after_first = pipeline.cli("tap", "docs", "--offset", "1").stdout.decode().splitlines()
    assert len(after_first) == len(texts) - sum(1 for n in end.values() if n)
    p0 = pipeline.cli("tap", "docs", "--offset", "0:0").stdout.decode().splitlines()
    assert len(p0) == end[0] and all("docs[0]@" in line for line in p0)

    for args, message in ((("tap", "nope"), "unknown topic 'nope'"),
                          (("tap", "docs", "--offset", "a:b"), "expected OFFSET or PARTITION:OFFSET"),
                          (("tap", "docs", "--offset", "9:0"), "there is no partition 9"),
                          (("tap", "docs", "--since", "soon"), "expected an ISO time"),
                          (("tap", "docs", "--where", "text"), "expected FIELD=VALUE")):
        result = pipeline.cli(*args, check=False)
        assert result.returncode == 2 and message in result.stderr.decode(), result.stderr.decode()

    # librdkafka, not aiokafka: plain JSON values and UTF-8 string keys (the root id).
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap_servers, "group.id": f"{pipeline.prefix}outsider",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(pipeline.prefix + "docs", p, 0) for p in range(4)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(texts) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                got.append((message.key().decode("utf-8"), orjson.loads(message.value())))
    finally:
        consumer.close()
    assert {value["id"] for _, value in got} == expected_ids(texts)
    assert all(key == value["root_id"] and value["kind"] == "document" for key, value in got)


def test_replay_offsets_and_since_move_only_the_partitions_asked_for(pipeline, tmp_path):
    pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "docs.jsonl", make_texts(12))))
    end = ends(pipeline, "docs")
    busy = [p for p, n in end.items() if n >= 2]
    assert busy, end

    out = pipeline.cli("replay", "situation", "--offset", f"{busy[0]}:1").stderr.decode()
    assert f"p{busy[0]} none→1" in out
    assert committed(pipeline, "situation", "docs") == {p: 1 if p == busy[0] else 0 for p in range(4)}

    pipeline.cli("replay", "situation", "--since", "2100-01-01T00:00")  # nothing that late: the end
    assert committed(pipeline, "situation", "docs") == end
    pipeline.cli("replay", "situation", "--since", "1h")
    assert committed(pipeline, "situation", "docs") == {p: 0 for p in range(4)}

    for args, message in ((("replay", "nope", "--from-beginning"), "unknown stage nope"),
                          (("replay", "situation", "--offset", "1:x"), "expected OFFSET or PARTITION:OFFSET"),
                          (("replay", "situation", "--offset", "7:0"), "there is no partition 7"),
                          (("replay", "situation", "--from-beginning", "--version", "no spaces"), "--version"),
                          (("replay", "dedup", "--from-beginning", "--version", "v2"), "keeps state")):
        result = pipeline.cli(*args, check=False)
        assert result.returncode == 2 and message in result.stderr.decode(), result.stderr.decode()


def test_replay_under_a_new_version_regenerates_beside_the_old_while_workers_run(pipeline, start_simulator, tmp_path):
    sim = start_simulator()
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    texts = make_texts(4)
    pipeline.feed(tmp_path, texts, seeds=3)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)
    first = samples(pipeline)
    assert len(first) == 4

    # A worker of the stage stays up: a versioned replay has its own group, so it need not stop.
    worker = pipeline.start("run", "--stage", "instruction", "--no-progress", name="instruction")
    wait_for(lambda: "instruction: assigned partitions" in pipeline.log_of(worker), 60, what="worker joined")
    # A change outside the stage's identity (sampling), kept apart from the old records by the version.
    pipeline.env["SYNTHSTREAM_STAGES__INSTRUCTION__LLM__TEMPERATURE"] = "1.1"
    replay = pipeline.cli("replay", "instruction", "--from-beginning", "--version", "v2", "--no-progress")
    message = replay.stderr.decode()
    assert "4 input records, 4 new records" in message and f"group {pipeline.prefix}instruction@v2" in message
    assert 'version = "v2"' in message
    assert committed(pipeline, "instruction@v2", "situations") == ends(pipeline, "situations")
    assert stop_process(worker) == 0

    regenerated = json_lines(pipeline.cli("tap", "instructions", "--json", "--where",
                                          "lineage.stages.version=" + stage_version(first[0], "instruction") + "+v2"
                                          ).stdout.decode())
    assert len(regenerated) == 4
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)

    rows = samples(pipeline)
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8 and {r["id"] for r in first} < {r["id"] for r in rows}
    versions = Counter(stage_version(r, "instruction") for r in rows)
    old = stage_version(first[0], "instruction")
    assert versions == Counter({old: 4, f"{old}+v2": 4})
    assert Counter(r["root_id"] for r in rows) == Counter({rid: 2 for rid in expected_ids(texts)})


def test_dead_letters_are_redriven_once_after_the_fault_is_fixed(pipeline, start_simulator, tmp_path):
    texts = dead_letters_at_instruction(pipeline, start_simulator, tmp_path, documents=4)

    listed = pipeline.cli("dlq", "list", "--stage", "instruction")
    lines = listed.stdout.decode().splitlines()[1:]
    assert len(lines) == 4 and all(" instruction " in line and " pending " in line for line in lines), lines
    assert "4 dead letters: 4 pending, 0 redriven" in listed.stderr.decode()
    assert pipeline.cli("dlq", "list", "--stage", "judge").stdout.decode().splitlines()[1:] == []
    assert len(pipeline.cli("dlq", "list", "--where", "data.error_type=LLMUnavailableError").stdout.splitlines()) == 5
    letter_id = lines[0].split()[0]
    shown = orjson.loads(pipeline.cli("dlq", "show", letter_id[:8]).stdout)
    assert shown["id"] == letter_id and shown["data"]["input"]["kind"] == "situation"
    assert pipeline.cli("dlq", "show", "ffffffffffffffff", check=False).returncode == 2
    situations_before = len(read_topic(pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"],
                                       pipeline.prefix + "situations"))

    # The fault is fixed: the stage gets the healthy endpoint, and the dead letters go back.
    pipeline.env["SYNTHSTREAM_STAGES__INSTRUCTION__LLM__BASE_URL"] = pipeline.env["SYNTHSTREAM_LLM__BASE_URL"]
    redriven = pipeline.cli("dlq", "redrive", "--stage", "instruction")
    sent = redriven.stdout.decode().splitlines()
    assert len(sent) == 4 and all(f"-> {pipeline.prefix}situations[" in line for line in sent), sent
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)

    rows = samples(pipeline)
    assert Counter(r["root_id"] for r in rows) == Counter({rid: 1 for rid in expected_ids(texts)})
    assert len({r["id"] for r in rows}) == 4
    assert len(stored_rows(pipeline.data_dir, pipeline.prefix + "dlq")) == 4

    again = pipeline.cli("dlq", "redrive")
    assert again.stdout == b"" and "redrove 0 dead letters" in again.stderr.decode()
    assert "4 were redriven before" in again.stderr.decode()
    bootstrap = pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    assert len(read_topic(bootstrap, pipeline.prefix + "situations")) == situations_before + 4
    assert "4 dead letters: 0 pending, 4 redriven" in pipeline.cli("dlq", "list").stderr.decode()


def test_a_reader_kept_between_reads_stops_at_each_end_without_losing_what_came_after(pipeline):
    """What status and the console's live figures do every sample: read a topic up to its end then,
    again later up to its new end. Records fetched past the first end are read the second time."""
    from streamer.kafka.clients import ensure_topics
    from streamer.kafka.reader import TopicReader
    from streamer.records import Document, new_root

    settings = pipeline.settings()
    topic = pipeline.prefix + "docs"
    asyncio.run(ensure_topics(settings, ["docs"]))
    docs = [new_root(Document(text=text, source="test")) for text in make_texts(40)]
    bootstrap = settings.kafka.bootstrap_servers

    async def read_twice() -> tuple[list[str], list[str]]:
        await asyncio.to_thread(produce, bootstrap, topic, docs[:20])
        async with TopicReader(settings) as offsets, TopicReader(settings) as reader:  # as status's Sampler
            tps = offsets.partitions(topic)
            first_end = await offsets.ends(tps)
            await asyncio.to_thread(produce, bootstrap, topic, docs[20:])  # arrives before the first read
            reader.assign(await offsets.beginnings(tps))
            first = [orjson.loads(r.value)["id"] async for r in reader.records(first_end)]
            second = [orjson.loads(r.value)["id"] async for r in reader.records(await offsets.ends(tps))]
            return first, second

    first, second = asyncio.run(read_twice())
    assert sorted(first) == sorted(d.id for d in docs[:20])
    assert sorted(second) == sorted(d.id for d in docs[20:])  # once each: none lost, none twice


def test_a_record_is_found_by_id_on_any_topic_whatever_the_topics_before_it(pipeline, tmp_path):
    """The console's record view for what the store does not hold: the topics read in turn."""
    from streamer.ui.topics import find_on_topics

    pipeline.feed(tmp_path, make_texts(6), seeds=3)  # seeds come before docs in the topic list
    settings = pipeline.settings()
    docs = read_topic(settings.kafka.bootstrap_servers, pipeline.prefix + "docs")
    wanted = docs[-1]["id"]
    found = asyncio.run(find_on_topics(settings, wanted))
    assert found is not None and found["topic"] == "docs" and found["envelope"]["id"] == wanted
