"""GLAN: the taxonomy file, the seeded question draws, the stages end to end over the real broker
and the simulator (HTTP), replay reproducing the draws, late-added disciplines, the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict

import orjson
import pytest
from helpers import read_topic, wait_for

from consumers.questions import QuestionsOptions, draw_question
from consumers.payloads import ClassSession
from producers.taxonomy import (
    DEFAULT_TAXONOMY,
    TaxonomyError,
    load_taxonomy,
    parse_taxonomy,
)
from streamer.text import name_key

SMALL_TAXONOMY = """\
version: 1
fields:
  Natural sciences:
    Physical sciences:
      - Astronomy
  Services:
    Personal services:
      - name: Culinary arts
        description: cooking techniques, kitchen management and food safety
"""
GROWN_TAXONOMY = SMALL_TAXONOMY + "      - Hairdressing\n"


# The taxonomy file ------------------------------------------------------------------------------
def test_the_shipped_taxonomy_loads_with_at_least_100_unique_disciplines_across_fields():
    taxonomy = load_taxonomy(DEFAULT_TAXONOMY)
    names = {name_key(d.name) for d in taxonomy.disciplines}
    assert len(names) == len(taxonomy.disciplines) >= 100
    fields = {d.field for d in taxonomy.disciplines}
    for broad in ("Natural sciences, mathematics and statistics", "Arts and humanities", "Health and welfare",
                  "Engineering, manufacturing and construction", "Services"):
        assert broad in fields
    assert all(d.line > 0 and d.sub_field for d in taxonomy.disciplines)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("version: 1\nfields:\n  A:\n    B:\n      - x\n     - y\n", 6, "not valid YAML"),
    ("version: 1\nfields:\n  A:\n    B:\n      - Algebra\n    C:\n      - algebra\n", 7, "already appears on line 5"),
    ("version: 1\nfields:\n  A:\n    B: []\n", 4, "non-empty list of disciplines"),
    ("version: 1\nfields:\n  A:\n    B:\n      - [x, y]\n", 5, "a discipline is a name"),
    ("version: 1\nfields:\n  A:\n    B:\n      - name: X\n        descr: y\n", 5, "optionally `description`"),
    ("version: 3\nfields:\n  A:\n    B: [x]\n", 1, "unsupported taxonomy version"),
])
def test_a_malformed_taxonomy_names_its_line(text, line, words):
    with pytest.raises(TaxonomyError) as caught:
        parse_taxonomy(text, "bad.yaml")
    assert f"bad.yaml, line {line}:" in str(caught.value) and words in str(caught.value)


def test_feed_taxonomy_reports_a_bad_file_with_its_line_before_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nfields:\n  A:\n    B:\n      - ok\n      - {name: }\n")
    result = subprocess.run([sys.executable, "-m", "streamer.cli", "feed", "taxonomy", str(bad)],
                            capture_output=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}, line 6: discipline name must be non-empty text" in result.stderr.decode()
    assert "embedded broker" not in result.stderr.decode()
    unknown = subprocess.run([sys.executable, "-m", "streamer.cli", "feed", "taxonomy", "--only", "Astronomy and astrofysics"],
                             capture_output=True, timeout=60, cwd=tmp_path)
    assert unknown.returncode == 2 and "did you mean Astronomy and astrophysics" in unknown.stderr.decode()


# The draws ---------------------------------------------------------------------------------------
SESSIONS = [ClassSession(title=f"Session {i}", description="what is taught",
                         key_concepts=[f"c{i}.{j}" for j in range(1 + i % 6)]) for i in range(12)]


def concept_sessions(draw) -> set[int]:
    return {s for s, _ in draw.concepts}


def test_draws_mix_one_and_two_session_questions_at_the_configured_ratio():
    opts = QuestionsOptions(integrative_share=0.3, max_concepts=5)
    draws = [draw_question(f"syllabus-{r}", i, SESSIONS, opts) for r in range(300) for i in range(10)]
    share = sum(d.mode == "integrative" for d in draws) / len(draws)
    assert abs(share - 0.3) < 0.03, share  # 3000 draws: one standard deviation is 0.008
    for d in draws:
        if d.mode == "integrative":
            assert len(d.sessions) == 2 and d.sessions[0] < d.sessions[1]
            assert concept_sessions(d) == set(d.sessions), "both sessions contribute a concept"
            assert 2 <= len(d.concepts) <= 5
        else:
            assert len(d.sessions) == 1 and concept_sessions(d) == set(d.sessions)
            assert 1 <= len(d.concepts) <= 5
        for session, concept in d.concepts:
            assert concept in SESSIONS[session].key_concepts
        assert len(set(d.concepts)) == len(d.concepts)
    sizes = Counter(len(d.concepts) for d in draws if d.mode == "basic")
    assert set(sizes) == {1, 2, 3, 4, 5}, sizes


def test_draws_are_seeded_by_record_and_index():
    opts = QuestionsOptions()
    assert draw_question("r1", 3, SESSIONS, opts) == draw_question("r1", 3, SESSIONS, opts)
    assert len({draw_question("r1", i, SESSIONS, opts) for i in range(20)}) > 15
    assert draw_question("r1", 3, SESSIONS, opts) != draw_question("r2", 3, SESSIONS, opts)
    all_basic = QuestionsOptions(integrative_share=0.0)
    assert all(draw_question("r", i, SESSIONS, all_basic).mode == "basic" for i in range(50))


# End to end ----------------------------------------------------------------------------------------
GLAN_STAGES = ("--stage", "subjects", "--stage", "syllabus", "--stage", "questions")


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


@pytest.mark.slow
def test_glan_stages_end_to_end_replay_and_a_discipline_added_later(pipeline, broker, start_simulator, tmp_path):
    sim = start_simulator()
    pipeline.env.update({
        "SYNTHSTREAM_LLM__BASE_URL": sim.url,
        "SYNTHSTREAM_STAGES__SUBJECTS__SUBJECT_QUERIES": "2",
        "SYNTHSTREAM_STAGES__SUBJECTS__MAX_SUBJECTS": "2",
        "SYNTHSTREAM_STAGES__QUESTIONS__QUESTIONS_PER_SYLLABUS": "6",
        "SYNTHSTREAM_STAGES__QUESTIONS__INTEGRATIVE_SHARE": "0.5",
    })
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(SMALL_TAXONOMY)
    fed = pipeline.cli("feed", "taxonomy", str(taxonomy))
    assert "fed 2 disciplines" in fed.stderr.decode()
    pipeline.cli("run", *GLAN_STAGES, "--until-idle", "--no-progress", timeout=180)

    topic = pipeline.prefix
    subjects = read_topic(broker.bootstrap_servers, topic + "glan.subjects")
    syllabi = by_id(read_topic(broker.bootstrap_servers, topic + "glan.syllabi"))
    questions = read_topic(broker.bootstrap_servers, topic + "instructions")
    per_discipline = Counter(s["data"]["taxonomy_path"][2] for s in subjects)
    assert set(per_discipline) == {"Astronomy", "Culinary arts"} and all(1 <= n <= 2 for n in per_discipline.values())
    assert len(syllabi) == len(subjects) and len(questions) == 6 * len(syllabi)

    for q in questions:
        assert q["method"] == "glan" and q["kind"] == "instruction"
        details = q["lineage"]["details"]
        assert len(details["taxonomy_path"]) == 4 and details["level"]
        sampling = details["sampling"]
        sessions = syllabi[q["parent_id"]]["data"]["sessions"]
        numbers = [s["number"] for s in sampling["sessions"]]
        from_sessions = {c["session"] for c in sampling["concepts"]}
        for c in sampling["concepts"]:
            assert c["concept"] in sessions[c["session"] - 1]["key_concepts"]
        if sampling["mode"] == "integrative":
            assert len(numbers) == 2 and numbers[0] < numbers[1] and from_sessions == set(numbers)
        else:
            assert sampling["mode"] == "basic" and len(numbers) == 1 and from_sessions == set(numbers)
        assert 1 <= len(sampling["concepts"]) <= 5
    modes = Counter(q["lineage"]["details"]["sampling"]["mode"] for q in questions)
    assert modes["basic"] and modes["integrative"], modes

    # Replay the syllabi into the questions stage under a new prompt: same draws, new records.
    prompt = tmp_path / "questions-v2.toml"
    prompt.write_text('version = "2"\nsystem = "You set homework. Reply with JSON."\n'
                      'user = "{subject} ({level}, {path})\\n{syllabus}\\nUp to session {last_number} '
                      '({last_title}); question {scope} using {concepts}."\n')
    pipeline.env["SYNTHSTREAM_STAGES__QUESTIONS__PROMPT_FILE"] = str(prompt)
    wait_for(lambda: pipeline.cli("replay", "questions", "--from-beginning", check=False).returncode == 0,
             60, interval=1, what="replay of the questions stage")
    pipeline.cli("run", "--stage", "questions", "--until-idle", "--no-progress", timeout=180)
    replayed = read_topic(broker.bootstrap_servers, topic + "instructions")
    draws: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for q in replayed:
        draws[(q["parent_id"], q["lineage"]["details"]["sampling"]["index"])].append(q)
    assert len(draws) == len(questions) and len(replayed) == 2 * len(questions)
    for pair in draws.values():
        versions = {q["lineage"]["stages"][-1]["version"] for q in pair}
        assert len(pair) == 2 and len(versions) == 2 and any(v.startswith("2-") for v in versions)
        first, second = (q["lineage"]["details"]["sampling"] for q in pair)
        assert first == second, "a replay draws exactly the same sessions and concepts"

    # A discipline added to the file later is the only one that is sent, and the only new work.
    taxonomy.write_text(GROWN_TAXONOMY)
    fed_again = pipeline.cli("feed", "taxonomy", str(taxonomy)).stderr.decode()
    assert "fed 1 discipline to" in fed_again and "2 already on the topic" in fed_again
    pipeline.cli("run", "--stage", "subjects", "--until-idle", "--no-progress", timeout=180)
    grown = read_topic(broker.bootstrap_servers, topic + "glan.subjects")
    new = [s for s in grown if s["id"] not in by_id(subjects)]
    assert new and {s["data"]["taxonomy_path"][2] for s in new} == {"Hairdressing"}
    assert len(grown) == len(subjects) + len(new)


@pytest.mark.slow
def test_glan_demo_checks_its_counts_and_exports_taxonomy_paths_and_sampling(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    result = subprocess.run([sys.executable, "-m", "streamer.cli", "demo", "--method", "glan"], cwd=tmp_path,
                            env=env, capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 0, err[-3000:]
    assert "MISMATCH" not in err
    for stage in ("subjects", "syllabus", "questions", "judge", "embed", "dedup", "answer"):
        assert f"demo:   {stage}" in err and "ok:" in err.split(f"demo:   {stage}")[1].splitlines()[0]
    assert "3 disciplines x subject_queries 2 = 6 LLM calls" in err

    rows = [orjson.loads(line) for line in (tmp_path / result.stdout.decode().split()[-1]).read_bytes().splitlines()]
    assert rows and all(r["method"] == "glan" and r["simulated"] for r in rows)
    for row in rows:
        details = row["lineage"]["details"]
        _field, _sub_field, discipline, subject = details["taxonomy_path"]
        assert discipline in {"Statistics", "Contract law", "Culinary arts"} and subject
        assert details["sampling"]["mode"] in {"basic", "integrative"}
        assert details["sampling"]["sessions"] and details["sampling"]["concepts"]
        assert [s["stage"] for s in row["lineage"]["stages"]][:3] == ["subjects", "syllabus", "questions"]


def test_propose_taxonomy_writes_a_file_the_loader_accepts(start_simulator, tmp_path):
    sim = start_simulator()
    out = tmp_path / "proposed.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__MODEL": "synthstream-simulator"})
    result = subprocess.run([sys.executable, "-m", "streamer.cli", "glan", "propose-taxonomy", "--out", str(out),
                             "--fields", "3", "--sub-fields", "2", "--disciplines", "4"],
                            env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    taxonomy = load_taxonomy(out)
    fields = {d.field for d in taxonomy.disciplines}
    assert 1 <= len(fields) <= 3 and len(taxonomy.disciplines) <= 3 * 2 * 4
    assert out.read_text().startswith("# Taxonomy proposed by synthstream-simulator")
    assert f"{len(taxonomy.disciplines)} disciplines" in result.stderr.decode()
