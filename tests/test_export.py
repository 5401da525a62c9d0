"""`synthstream export`: each sample with its whole chain as nested fields, loadable by `datasets` and
pandas without glue, a dataset card with the right counts, filters that select what they say, and an
empty export that says where it looked.

One real pipeline per module (embedded broker, simulator, every stage, both methods, then a replay
of `answer` under version `hot`); the tests export from its store and check against the stored
envelopes and the intermediate topics, read independently.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from consumers.rubric import CRITERIA
from streamer.records import Envelope, Lineage, Sample, StageStamp
from streamer.storage.card import CARD_MARK
from streamer.storage.export import ExportFilters, export_samples

from conftest import Pipeline, launch_simulator, new_pipeline
from helpers import CLI, SEED_INSTRUCTIONS, make_texts, read_topic, stop_process, write_seeds
from test_storage import TOPIC, sample_envelope, store_batch

CONFIGURED_MODEL = "gpt-4o-mini"
ANSWERING_MODEL = f"synthstream-simulator/{CONFIGURED_MODEL}"
LLM_STAGES = ("situation", "instruction", "judge", "answer")
N_DOCS = 8


@dataclass
class Run:
    pipeline: Pipeline
    docs: dict[str, dict]  # url -> the fed row (text, title, url)
    stored: dict[str, dict]  # sample id -> stored envelope
    cut: float  # between the first run and the replay


@pytest.fixture(scope="module")
def run(broker, tmp_path_factory) -> Run:
    workdir = tmp_path_factory.mktemp("export")
    pipeline = new_pipeline(broker, workdir)
    sim = launch_simulator(workdir)
    pipeline.env.update({
        "SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__MODEL": CONFIGURED_MODEL,
        "SYNTHSTREAM_STAGES__SUBJECTS__SUBJECT_QUERIES": "1", "SYNTHSTREAM_STAGES__SUBJECTS__MAX_SUBJECTS": "1",
        "SYNTHSTREAM_STAGES__QUESTIONS__QUESTIONS_PER_SYLLABUS": "2",
    })
    try:
        docs = {f"https://example.org/page/{i}": {"text": text, "title": f"Page {i}: a note",
                                                  "url": f"https://example.org/page/{i}"}
                for i, text in enumerate(make_texts(N_DOCS))}
        (workdir / "docs.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs.values()))
        pipeline.cli("feed", "seeds", str(write_seeds(workdir / "seeds.jsonl", 3)))
        pipeline.cli("feed", "docs", str(workdir / "docs.jsonl"))
        pipeline.cli("feed", "taxonomy", "--only", "Statistics")
        pipeline.cli("run", "--until-idle", "--no-progress", timeout=300)
        time.sleep(1.2)  # --since takes whole seconds: no sample within a second of the cut
        cut = time.time()
        time.sleep(1.2)
        pipeline.cli("replay", "answer", "--from-beginning", "--version", "hot", "--no-progress", timeout=300)
        pipeline.cli("run", "--until-idle", "--no-progress", timeout=300)  # the sink stores the replay's samples
        yield Run(pipeline, docs, stored_samples(pipeline), cut)
    finally:
        stop_process(sim.proc)
        for proc in pipeline.procs:
            stop_process(proc, signal.SIGKILL)


def stored_samples(pipeline: Pipeline) -> dict[str, dict]:
    """The store read directly: one envelope per sample id."""
    out: dict[str, dict] = {}
    for path in sorted((pipeline.data_dir / "store" / f"{pipeline.prefix}samples").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            out.setdefault(row["id"], orjson.loads(row["envelope"]))
    return out


def export(run: Run, out: Path, *args: str, check: bool = True):
    return run.pipeline.cli("export", "--out", str(out), *args, check=check)


def jsonl_rows(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def by_root(records: list[dict]) -> dict[str, dict]:
    return {r["root_id"]: r for r in records}


def test_the_run_made_what_the_tests_need(run: Run):
    methods = Counter(env["method"] for env in run.stored.values())
    hot = [env for env in run.stored.values() if env["lineage"]["stages"][-1]["version"].endswith("+hot")]
    # Every kept instruction answered twice: once by the run, once by the replay under `hot`.
    assert methods["synthquestions"] >= N_DOCS and methods["glan"] >= 2, methods
    assert len(hot) * 2 == len(run.stored)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_loads_in_datasets_and_pandas_with_nested_fields(run: Run, tmp_path: Path, fmt: str):
    import datasets

    out = tmp_path / f"dataset.{fmt}"
    export(run, out)
    ds = datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")
    assert ds.num_rows == len(run.stored) and set(ds["id"]) == set(run.stored)
    frame = pd.read_json(out, lines=True) if fmt == "jsonl" else pd.read_parquet(out)
    assert len(frame) == len(run.stored)
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert [s["stage"] for s in row["lineage"]["stages"]][-1] == "answer"
        assert set(row["judge"]["scores"]) == set(CRITERIA)
        assert row["judge"]["total"] == sum(row["judge"]["scores"].values())
        if row["method"] == "synthquestions":
            assert row["document"]["title"] == run.docs[row["document"]["url"]]["title"]
    first = frame[frame["method"] == "synthquestions"].iloc[0]
    assert first["document"]["title"].startswith("Page ") and first["situation"]["user"]
    assert set(first["judge"]["scores"]) == set(CRITERIA) and first["lineage"]["stages"][0]["stage"] == "situation"


def test_jsonl_and_parquet_hold_the_same_rows(run: Run, tmp_path: Path):
    export(run, tmp_path / "a" / "dataset.jsonl")
    export(run, tmp_path / "b" / "dataset.parquet")
    from_jsonl = sorted(jsonl_rows(tmp_path / "a" / "dataset.jsonl"), key=lambda r: r["id"])
    from_parquet = sorted(pq.read_table(tmp_path / "b" / "dataset.parquet").to_pylist(), key=lambda r: r["id"])
    assert from_jsonl == from_parquet
    assert all(isinstance(r["lineage"]["details"], dict) and isinstance(r["meta"], dict) for r in from_jsonl)


def test_a_sample_carries_its_whole_chain_as_the_topics_had_it(run: Run, tmp_path: Path):
    out = tmp_path / "dataset.jsonl"
    export(run, out)
    rows = jsonl_rows(out)
    topic = run.pipeline.prefix
    bootstrap = run.pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    docs = by_root(read_topic(bootstrap, topic + "docs"))
    situations = by_root(read_topic(bootstrap, topic + "situations"))
    kept = {r["id"]: r for r in read_topic(bootstrap, topic + "instructions.unique")}
    instruction_ids = {r["instruction_id"] for r in rows}
    for row in rows:
        assert row["simulated"] and row["model"] == ANSWERING_MODEL
        assert all(row["models"][stage] == ANSWERING_MODEL for stage in ("judge", "answer"))
        unique = kept[row["instruction_id"]]
        assert row["instruction"] == unique["data"]["instruction"] == row["messages"][0]["content"]
        assert row["judge"]["scores"] == unique["data"]["judgement"]["scores"]
        assert row["dedup"]["decision"] == "kept"
        assert row["dedup"]["nearest_id"] is None or row["dedup"]["nearest_id"] in instruction_ids
        if row["method"] == "glan":
            assert row["glan"]["taxonomy_path"][2] == "Statistics" and row["glan"]["subject"]
            assert row["glan"]["mode"] in {"basic", "integrative"} and row["glan"]["sessions"]
            assert row["document"] is None and row["situation"] is None and row["compositions"] is None
            continue
        # One schema for all rows: the GLAN stages are there too, null.
        assert {stage for stage, model in row["models"].items() if model} == set(LLM_STAGES)
        doc = docs[row["root_id"]]["data"]
        assert row["document"] == {"id": row["root_id"], "title": doc["meta"]["title"], "url": doc["meta"]["url"],
                                   "source": doc["source"], "page_id": None, "part": None, "parts": None}
        fed = {k: v for k, v in situations[row["root_id"]]["data"].items() if k != "document"}
        assert row["situation"] == fed
        # Up to 3 examples: a document may be handled while only some seeds are attributed yet.
        assert 1 <= len(row["seeds"]) <= 3 and {s["instruction"] for s in row["seeds"]} <= set(SEED_INSTRUCTIONS)
        assert [s["id"] for s in row["seeds"]] == row["lineage"]["seed_ids"]
        assert row["compositions"] == unique["data"]["compositions"]
    nearest = [row["dedup"] for row in rows if row["dedup"]["nearest_id"]]
    assert nearest and all(-1 <= d["similarity"] <= 1 for d in nearest)


def test_a_redelivered_record_does_not_name_itself_its_nearest_neighbour():
    from consumers.dedup import Decision

    assert Decision(True, "out-a", 1.0, redelivered=True).lineage() == {
        "decision": "kept", "nearest_id": None, "similarity": None}
    assert Decision(False, "out-b", 0.93421).lineage() == {
        "decision": "near_duplicate", "nearest_id": "out-b", "similarity": 0.9342}


def read_card(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def table_counts(body: str, heading: str) -> dict[str, int]:
    section = body.split(f"| {heading} | rows |", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (.+?) \| (\d+) \|$", section, re.M)}


def test_the_dataset_card_lists_the_right_counts(run: Run, tmp_path: Path):
    import datasets

    out = tmp_path / "dataset.parquet"
    export(run, out)
    rows = pq.read_table(out).to_pylist()
    meta, body = read_card(tmp_path / "README.md")
    assert CARD_MARK in (tmp_path / "README.md").read_text().splitlines()[1]
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_examples": len(rows)}]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "dataset.parquet"}]
    assert "simulated" in meta["tags"] and meta["synthstream"]["export_schema_version"] == 3
    assert table_counts(body, "method") == Counter(r["method"] for r in rows)
    assert table_counts(body, "model (answering)") == Counter(r["model"] for r in rows)
    assert f"- rows: {len(rows)}" in body and f"- simulated rows: {len(rows)}" in body
    assert "api_key" not in body and "Simulated: every row" in body
    # The card's features are the file's: `datasets` loads the directory through the card.
    from_card = datasets.load_dataset(str(tmp_path), split="train")
    assert from_card.num_rows == len(rows)
    assert from_card.features == datasets.Features.from_arrow_schema(pq.read_schema(out))


def test_the_card_states_the_settings_of_the_runs_that_made_the_rows_not_the_exporting_shells(run: Run, tmp_path: Path):
    # Exported from a shell without the run's variables (its judge threshold, dedup threshold, endpoint).
    env = {k: v for k, v in run.pipeline.env.items()
           if not k.startswith(("SYNTHSTREAM_STAGES__", "SYNTHSTREAM_LLM__"))}
    out = tmp_path / "dataset.jsonl"
    subprocess.run([*CLI, "export", "--out", str(out), "--since", "1d"], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    _, body = read_card(tmp_path / "README.md")
    generation = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert [entry["options"]["threshold"] for entry in generation["judge"]] == [0]  # the run's, not the default 4
    assert [entry["options"]["threshold"] for entry in generation["dedup"]] == [1.0]  # not 0.9
    endpoint = run.pipeline.env["SYNTHSTREAM_LLM__BASE_URL"]
    for stage in LLM_STAGES:
        assert {(e["llm_endpoint"], e["llm"]["model"]) for e in generation[stage]} == {(endpoint, CONFIGURED_MODEL)}
    # answer ran twice: under its version, then replayed under +hot; both made rows.
    answer_versions = {v for env in run.stored.values() for s in env["lineage"]["stages"] if s["stage"] == "answer"
                       for v in [s["version"]]}
    assert {e["version"] for e in generation["answer"]} == answer_versions and len(answer_versions) == 2
    assert "none configured" not in body and "Not recorded" not in body
    assert re.search(r"- made at or after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body)  # not only "1d"


def expected_ids(run: Run, keep) -> set[str]:
    return {sid for sid, env in run.stored.items() if keep(env)}


def _versions(env: dict) -> list[str]:
    return [s["version"] for s in env["lineage"]["stages"]]


def test_each_filter_selects_what_it_says(run: Run, tmp_path: Path):
    scores = sorted(env["data"]["meta"]["judge_score"] for env in run.stored.values())
    median = scores[len(scores) // 2]
    since_iso = datetime.fromtimestamp(run.cut).isoformat(timespec="seconds")
    since_at = datetime.fromisoformat(since_iso).timestamp()
    situation_version = next(s["version"] for env in run.stored.values() for s in env["lineage"]["stages"]
                             if s["stage"] == "situation")
    cases = {
        ("--method", "glan"): lambda env: env["method"] == "glan",
        ("--min-score", str(median)): lambda env: env["data"]["meta"]["judge_score"] >= median,
        ("--version", "hot"): lambda env: any(v.endswith("+hot") for v in _versions(env)),
        ("--version", situation_version): lambda env: situation_version in _versions(env),
        ("--since", since_iso): lambda env: env["created_at"] >= since_at,
        ("--since", "1d"): lambda env: True,
        ("--method", "synthquestions", "--min-score", str(median)):
            lambda env: env["method"] == "synthquestions" and env["data"]["meta"]["judge_score"] >= median,
    }
    for i, (args, keep) in enumerate(cases.items()):
        expected = expected_ids(run, keep)
        assert 0 < len(expected), args
        out = tmp_path / str(i) / "dataset.jsonl"
        export(run, out, *args)
        assert {r["id"] for r in jsonl_rows(out)} == expected, args
        card = (out.parent / "README.md").read_text()
        assert f"{len(expected)} of {len(run.stored)} stored samples selected" in card or len(expected) == len(
            run.stored), args
        assert f"`{args[0]} {args[1]}`" in card, args
    assert len(expected_ids(run, cases[("--version", "hot")])) == len(run.stored) // 2  # a proper subset


def test_an_empty_export_says_where_it_looked_and_fails(run: Run, tmp_path: Path):
    empty = tmp_path / "nothing-here"
    result = export(run, tmp_path / "x.jsonl", "--data-dir", str(empty), check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and not (tmp_path / "x.jsonl").exists()
    assert str(empty / "store") in err and f"{run.pipeline.prefix}samples" in err and "does not exist" in err

    result = export(run, tmp_path / "x.jsonl", "--min-score", "8", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and f"none of the {len(run.stored)} samples" in err and "--min-score 8" in err

    # The demo keeps its store under <data_dir>/demo: an export of the plain data dir points there.
    data_dir = tmp_path / "synthstream-data"
    samples = f"{run.pipeline.prefix}samples"
    shutil.copytree(run.pipeline.data_dir / "store" / samples, data_dir / "demo" / "store" / samples)
    result = export(run, tmp_path / "x.jsonl", "--data-dir", str(data_dir), check=False)
    assert result.returncode == 1 and f"--data-dir {data_dir / 'demo'}" in result.stderr.decode()
    export(run, tmp_path / "x.jsonl", "--data-dir", str(data_dir / "demo"))
    assert len(jsonl_rows(tmp_path / "x.jsonl")) == len(run.stored)


# Without a pipeline: samples stored before the chain was carried, odd details, the card's place ----
def old_and_odd_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    envs = [sample_envelope(n) for n in range(4)]  # stored before the chain was carried: no details
    odd = Envelope(id="odd", kind="sample", root_id="r", method="standin",
                   lineage=Lineage(stages=[StageStamp(stage="standin", version="1", model="m")],
                                   details={"value": "text here", "empty": {}}),
                   data=Sample(instruction="q", response="a", meta={"judge_score": 3}).model_dump())
    envs[0].lineage.details = {"value": 7, "empty": {}}  # the same key, a number there and a text here
    store_batch(store, 0, 0, [*envs, odd])
    store_batch(store, 1, 0, envs[1:3])  # redelivered copies
    return store


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_samples_stored_before_the_chain_export_with_nulls(tmp_path: Path, fmt: str):
    import datasets

    out = tmp_path / f"dataset.{fmt}"
    result = export_samples(old_and_odd_store(tmp_path), TOPIC, out, fmt)
    assert (result.rows, result.skipped_duplicates, result.stored) == (5, 2, 5)
    ds = datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")
    rows = {r["id"]: r for r in ds}
    old = rows[sample_envelope(1).id]
    assert old["document"] == {"id": "doc0001", "title": None, "url": None, "source": None, "page_id": None,
                               "part": None, "parts": None}
    assert old["judge"] is None and old["dedup"] is None and old["situation"] is None and old["seeds"] == []
    assert old["model"] == "m" and old["stage_versions"] == {"standin": "1-abc"}
    assert rows["odd"]["judge"] == {"scores": None, "total": 3, "analysis": None}
    # A key holding a number in one sample and text in another is kept as text (JSON) in both.
    assert {rows["odd"]["lineage"]["details"]["value"], rows[sample_envelope(0).id]["lineage"]["details"]["value"]} \
        == {"text here", "7"}


def test_a_readme_not_written_by_export_is_left_alone(tmp_path: Path):
    store = old_and_odd_store(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("# my project\n")
    result = export_samples(store, TOPIC, tmp_path / "out" / "data.jsonl", "jsonl",
                            ExportFilters(method="standin"))
    assert (tmp_path / "out" / "README.md").read_text() == "# my project\n"
    assert result.card == tmp_path / "out" / "data.card.md" and "`--method standin`" in result.card.read_text()
    # Its own card it rewrites.
    (tmp_path / "out" / "README.md").unlink()
    first = export_samples(store, TOPIC, tmp_path / "out" / "data.jsonl").card
    assert first == tmp_path / "out" / "README.md"
    assert export_samples(store, TOPIC, tmp_path / "out" / "data.jsonl").card == first


def test_a_document_without_title_or_url_fields_is_referenced_by_its_source():
    from consumers.situation import document_reference
    from streamer.records import Document

    page = document_reference(Document(text="x", source="https://a.example/p", meta={"title": "  "}))
    assert page.model_dump() == {"title": None, "url": "https://a.example/p", "source": "https://a.example/p",
                                 "page_id": None, "part": None, "parts": None}
    assert document_reference(Document(text="x", source="notes.md")).url is None


def test_version_names_a_stage_and_a_bare_version_that_several_stages_have_is_refused(tmp_path: Path):
    from streamer.storage.export import AmbiguousVersionError

    def sample(n: int, instruction_version: str) -> Envelope:
        stages = [StageStamp(stage="instruction", version=instruction_version, model="m"),
                  StageStamp(stage="embed", version="1-e5e5e5e5"), StageStamp(stage="dedup", version="1-d0d0d0d0"),
                  StageStamp(stage="answer", version="1-a1a1a1a1", model="m")]
        return Envelope(id=f"s{n}", kind="sample", root_id=f"r{n}", method="synthquestions",
                        lineage=Lineage(stages=stages), data=Sample(instruction=f"q{n}", response="a").model_dump())

    store = tmp_path / "store"
    store_batch(store, 0, 0, [sample(0, "1-0a0a0a0a"), sample(1, "2-0b0b0b0b"), sample(2, "2-0b0b0b0b+hot")])

    def selected(version: str) -> set[str]:
        out = tmp_path / f"{version}.jsonl"
        result = export_samples(store, TOPIC, out, filters=ExportFilters(version=version))
        return {row["id"] for row in jsonl_rows(out)} | {f"stages:{','.join(sorted(result.counts.version_stages))}"}

    # A prompt file's version selects the samples its stage made under it; naming the stage is exact.
    assert selected("2") == {"s1", "s2", "stages:instruction"}
    assert selected("instruction=2") == {"s1", "s2", "stages:instruction"}
    assert selected("instruction=1") == {"s0", "stages:instruction"}
    assert selected("hot") == {"s2", "stages:instruction"} == selected("instruction=2-0b0b0b0b+hot")
    assert selected("embed=1-e5e5e5e5") == {"s0", "s1", "s2", "stages:embed"}
    # `1` alone is a version of instruction, embed, dedup and answer: it would select every row.
    with pytest.raises(AmbiguousVersionError, match=r"several stages \(answer, dedup, embed, instruction\).*"
                                                    r"--version answer=1"):
        selected("1")
