"""SynthQuestions stages with a real broker, real worker processes, the simulator over HTTP and the real
encoder: example choice from the table, prompt-version replays, replay refusal. What a stage does with
one record (prompts, delimiting, thresholds, schema failures) is in test_stages.py, in-process."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from consumers import TOPICS
from consumers.payloads import AttributedSeed, Compositions
from consumers.situation import ExampleSelector
from helpers import (
    expected_ids,
    make_texts,
    produce,
    stored_rows,
    wait_for,
)
from streamer.runtime.embedding import shared_encoder
from streamer.kafka.clients import ensure_topics
from streamer.records import Envelope, new_root
from streamer.state.table import TopicTable

pytestmark = pytest.mark.slow

COMPOSITIONS = Compositions(ability="a", knowledge="k", extra_information="e", expected_output="o")


def attributed(instruction: str, scene: str) -> Envelope:
    seed = AttributedSeed(instruction=instruction, keywords=["k"], user="a person", motivation="needs it",
                          scene=scene, compositions=COMPOSITIONS, score=5, source="test")
    return new_root(seed)


def root_of(data) -> Envelope:
    return new_root(data)


def test_nearest_examples_come_from_the_documents_topic_and_random_spreads(pipeline, broker):
    topics = {
        "cooking": ["How long should I rest a roast chicken before carving?",
                    "My bread dough won't rise in a cold kitchen, what can I do?",
                    "Substitute for buttermilk in pancake batter?",
                    "How do I stop a risotto from turning gluey?"],
        "code": ["Why does my Python asyncio program block when I call requests.get?",
                 "Write a SQL query that finds duplicate emails in a users table.",
                 "How do I rebase a feature branch onto main without losing commits?",
                 "Explain what a segmentation fault in C usually means."],
        "astronomy": ["Why does Mars look red through a backyard telescope?",
                      "How far away is the Andromeda galaxy and how was it measured?",
                      "When is the next total solar eclipse visible from Europe?",
                      "What causes the phases of the Moon?"],
    }
    docs = {
        "cooking": ["Braising short ribs: brown the meat, deglaze with wine, simmer covered at 150 C for three hours.",
                    "Pastry stays flaky when the butter is cold; chill the dough for 30 minutes before rolling."],
        "code": ["A Python generator yields values lazily; await inside an async def needs an event loop running.",
                 "Git stores commits as snapshots; a merge commit has two parents, a rebase rewrites history."],
        "astronomy": ["Jupiter's four largest moons were discovered by Galileo in 1610 with a small refractor.",
                      "A light-year is the distance light travels in a year, about 9.46 trillion kilometres."],
    }
    seeds = {topic: [attributed(q, f"Someone interested in {topic} asks.") for q in qs] for topic, qs in topics.items()}
    topic_of = {env.id: topic for topic, envs in seeds.items() for env in envs}
    settings = pipeline.settings()
    asyncio.run(ensure_topics(settings, TOPICS))
    produce(broker.bootstrap_servers, pipeline.prefix + "seeds.attributed", [e for es in seeds.values() for e in es])

    async def choose(mode: str) -> dict[str, list[list[str]]]:
        table = TopicTable(settings, "seeds.attributed", AttributedSeed)
        await table.start()
        try:
            # Concurrent choices on a fresh selector, as concurrent records make them.
            selector = ExampleSelector(shared_encoder())
            jobs = [(topic, text) for topic, texts in docs.items() for text in texts]
            picks = await asyncio.gather(*(selector.choose(text, table, 3, mode, seed=text) for _, text in jobs))
            assert all(len(p) == 3 for p in picks), picks
            out: dict[str, list[list[str]]] = {}
            for (topic, _), picked in zip(jobs, picks, strict=True):
                out.setdefault(topic, []).append(picked)
            return out
        finally:
            await table.stop()

    nearest = asyncio.run(choose("nearest"))
    own = [sum(topic_of[i] == topic for i in picked) for topic, picks in nearest.items() for picked in picks]
    picks_total = 3 * len(own)
    assert sum(own) >= 2 / 3 * picks_total, own  # mostly their own topic
    assert all(n >= 1 for n in own), own

    spread = asyncio.run(choose("random"))
    picked_topics = Counter(topic_of[i] for picks in spread.values() for picked in picks for i in picked)
    own_random = sum(topic_of[i] == topic for topic, picks in spread.items() for picked in picks for i in picked)
    assert len(picked_topics) == 3, picked_topics
    assert own_random <= sum(own) - 0.25 * picks_total, (own_random, sum(own))
    assert asyncio.run(choose("random")) == spread, "random picks are seeded by the document: a replay repeats them"


def test_new_prompt_version_and_replay_add_new_records_beside_the_old(pipeline, start_simulator, tmp_path):
    sim = start_simulator()
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    texts = make_texts(4)
    pipeline.feed(tmp_path, texts, seeds=3)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)
    first = {r["id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples")}
    assert len(first) == 4

    prompt = tmp_path / "instruction-v2.toml"
    prompt.write_text('version = "2"\nsystem = "You write what a real person would ask. Reply with JSON."\n'
                      'user = "Person: {situation}\\nDocument: {document}\\nWrite their message ({variant})."\n')
    pipeline.env["SYNTHSTREAM_STAGES__INSTRUCTION__PROMPT_FILE"] = str(prompt)

    def replay_accepted() -> bool:  # members of the finished run leave the group after a session timeout
        return pipeline.cli("replay", "instruction", "--from-beginning", check=False).returncode == 0

    wait_for(replay_accepted, 60, interval=1, what="replay of the instruction stage")
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)

    rows = [orjson.loads(r["envelope"]) for r in stored_rows(pipeline.data_dir, pipeline.prefix + "samples")]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8 and first < {r["id"] for r in rows}
    versions = Counter(next(s["version"] for s in r["lineage"]["stages"] if s["stage"] == "instruction") for r in rows)
    assert len(versions) == 2 and all(n == 4 for n in versions.values())
    assert any(v.startswith("2-") for v in versions)
    assert Counter(r["root_id"] for r in rows) == Counter({rid: 2 for rid in expected_ids(texts)})


def test_replay_refuses_while_a_worker_of_the_stage_is_running(pipeline, start_simulator):
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = start_simulator().url
    worker = pipeline.start("run", "--stage", "judge", "--no-progress", name="judge")
    wait_for(lambda: "judge: assigned partitions" in pipeline.log_of(worker), 60, what="judge worker joined")
    result = pipeline.cli("replay", "judge", "--from-beginning", check=False, timeout=120)
    assert result.returncode == 3
    assert "other active members" in result.stderr.decode() and "stop its workers first" in result.stderr.decode()
    assert worker.poll() is None
