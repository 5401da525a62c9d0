"""`synthstream report`: figures that match the store, real PNG charts, an HTML page, the real
encoder for diversity, and a one-line error when there is nothing to report."""

from __future__ import annotations

import os
import struct
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from aiokafka.structs import ConsumerRecord
from helpers import CLI, make_texts

from streamer.runtime.embedding import shared_encoder
from streamer.records import Envelope, Lineage, StageStamp
from streamer.report import CHARTS, ReportError, ReportOptions, make_report
from streamer.storage.store import rows as store_rows
from streamer.storage.sink import ROW_SCHEMA, _row, write_parquet_atomic
from streamer.storage.store import file_name

PREFIX = "synth."


# A store written through the sink's own row and file code -------------------------------------------
def store(store_dir: Path, topic: str, envelopes: list[Envelope], first_offset: int = 0, partition: int = 0) -> None:
    """One sink file of `envelopes`, as the sink writes a batch of a topic partition."""
    full = f"{PREFIX}{topic}"
    records = [ConsumerRecord(full, partition, first_offset + i, 0, 0, env.root_id.encode(), env.to_bytes(), None,
                              0, 0, ()) for i, env in enumerate(envelopes)]
    table = pa.Table.from_pylist([_row(topic, r) for r in records], schema=ROW_SCHEMA)
    write_parquet_atomic(store_dir / full / file_name(full, "incarnation-a", partition, first_offset), table)


def sample(n: int, instruction: str, method: str, score: int) -> Envelope:
    stages = [StageStamp(stage="judge", version="1-aaaa", model="m"), StageStamp(stage="answer", version="1-bbbb",
                                                                                  model="m")]
    return Envelope(id=f"s{n}", kind="sample", root_id=f"r{n}", method=method, simulated=True,
                    lineage=Lineage(stages=stages, details={"judge_score": score}),
                    data={"instruction": instruction, "response": "ok", "meta": {"judge_score": score}})


def rejection(n: int, stage: str, reason: str, score: float, method: str, judge_score: int) -> Envelope:
    return Envelope(id=f"x{n}", kind="rejection", root_id=f"r{n}", method=method,
                    lineage=Lineage(details={"judge_score": judge_score}),
                    data={"stage": stage, "reason": reason, "score": score, "record": {}})


def dead_letter(n: int, stage: str, method: str) -> Envelope:
    return Envelope(id=f"d{n}", kind="dead_letter", root_id=f"r{n}", method=method,
                    data={"stage": stage, "input_topic": "instructions.unique", "partition": 0, "offset": n,
                          "error": "boom", "error_type": "LLMError", "attempts": 3, "input": None})


SOURDOUGH = ["How do I bake sourdough bread at home with a starter?",
             "What is the best way to bake sourdough bread at home?"]
OTHERS = ["Explain how a compiler turns source code into machine code.",
          "Prove that the square root of two is an irrational number.",
          "How do glaciers carve U-shaped valleys over thousands of years?"]


@pytest.fixture
def handmade_store(tmp_path: Path) -> Path:
    store_dir = tmp_path / "data" / "store"
    samples = [sample(0, SOURDOUGH[0], "synthquestions", 5), sample(1, SOURDOUGH[1], "synthquestions", 6),
               sample(2, OTHERS[0], "synthquestions", 4), sample(3, OTHERS[1], "glan", 7),
               sample(4, OTHERS[2], "glan", 5)]
    store(store_dir, "samples", samples[:3])
    store(store_dir, "samples", samples[2:], first_offset=2, partition=1)  # s2 again: a redelivered copy
    store(store_dir, "rejected", [
        rejection(10, "judge", "judge score 2 below threshold 4", 2, "synthquestions", 2),
        rejection(11, "judge", "judge score 1 below threshold 4", 1, "glan", 1),
        rejection(12, "dedup", "exact duplicate of s0", 1.0, "synthquestions", 5),
        rejection(13, "dedup", "near-duplicate (cosine 0.934) of s1", 0.934, "synthquestions", 6),
        rejection(14, "attribution", "seed score 1 below min_seed_score 3", 1, None, 0),
    ])
    store(store_dir, "dlq", [dead_letter(20, "answer", "glan")])
    return store_dir


def options(store_dir: Path, out: Path, **overrides) -> ReportOptions:
    return ReportOptions(store_dir=store_dir, prefix=PREFIX, out=out, **overrides)


# Figures -----------------------------------------------------------------------------------------
def test_figures_match_a_handmade_store(handmade_store, tmp_path):
    figures = make_report(options(handmade_store, tmp_path / "report"))
    assert figures["samples"] == 5 and figures["simulated_samples"] == 5
    assert figures["stored"]["samples"] == {"rows": 6, "unique": 5}  # the redelivered copy counts once
    assert figures["samples_by_method"] == {"synthquestions": 3, "glan": 2}
    assert figures["rejected_by_stage"] == {
        "attribution": {"seed below min_seed_score": 1}, "dedup": {"exact duplicate": 1, "near duplicate": 1},
        "judge": {"below judge threshold": 2}}
    assert figures["dlq_by_stage"] == {"answer": 1}
    assert figures["instruction_outcomes"] == {"kept": 5, "rejected by judge": 2, "exact duplicate": 1,
                                               "near duplicate": 1}
    rates = figures["rates"]
    assert (rates["judged"], rates["judge_rejected"], rates["judge_rejection_rate"]) == (9, 2, round(2 / 9, 4))
    assert (rates["dedup_checked"], rates["dedup_duplicates"], rates["dedup_duplicate_rate"]) == (7, 2, round(2 / 7, 4))
    scores = figures["judge_scores"]
    assert {s: n for s, n in scores["kept"].items() if n} == {"4": 1, "5": 2, "6": 1, "7": 1}
    assert {s: n for s, n in scores["rejected by judge"].items() if n} == {"1": 1, "2": 1}
    assert {s: n for s, n in scores["rejected by dedup"].items() if n} == {"5": 1, "6": 1}
    assert [(v["stage"], v["version"], v["samples"]) for v in figures["stage_versions"]] == [
        ("judge", "1-aaaa", 5), ("answer", "1-bbbb", 5)]
    words = sorted(len(t.split()) for t in [*SOURDOUGH, *OTHERS])
    assert figures["instruction_words"]["min"] == words[0] and figures["instruction_words"]["max"] == words[-1]
    assert figures["instruction_words"]["median"] == words[2]


def test_diversity_uses_the_real_encoder(handmade_store, tmp_path):
    figures = make_report(options(handmade_store, tmp_path / "report"))
    diversity = figures["diversity"]
    texts = [*SOURDOUGH, *OTHERS]
    vectors = shared_encoder("all-MiniLM-L6-v2").encode_sync(texts)
    upper = np.triu_indices(len(texts), k=1)
    expected = 1.0 - float((vectors @ vectors.T)[upper].mean())
    assert diversity["sample_size"] == 5 and diversity["model"] == "all-MiniLM-L6-v2"
    assert diversity["mean_pairwise_cosine_distance"] == pytest.approx(expected, abs=1e-3)
    # Meaning, not spelling: the two sourdough questions share a topic, the other three do not.
    assert diversity["topic_clusters"] == 4
    assert diversity["largest_clusters"][0]["size"] == 2
    assert diversity["largest_clusters"][0]["example"] in SOURDOUGH


def test_method_filter_keeps_that_methods_samples_and_rejections(handmade_store, tmp_path):
    figures = make_report(options(handmade_store, tmp_path / "report", method="glan"))
    assert figures["samples"] == 2 and figures["samples_by_method"] == {"glan": 2}
    assert figures["rejected_by_stage"] == {"judge": {"below judge threshold": 1}}
    assert figures["dlq_by_stage"] == {"answer": 1}
    with pytest.raises(ReportError, match=r"no samples of method 'nope'.*glan, synthquestions"):
        make_report(options(handmade_store, tmp_path / "report", method="nope"))


def test_diversity_sample_is_capped_and_seeded(tmp_path):
    store_dir = tmp_path / "store"
    store(store_dir, "samples", [sample(i, text, "synthquestions", 5) for i, text in enumerate(make_texts(40))])
    first = make_report(options(store_dir, tmp_path / "a", sample_size=10, seed=7))["diversity"]
    again = make_report(options(store_dir, tmp_path / "b", sample_size=10, seed=7))["diversity"]
    other = make_report(options(store_dir, tmp_path / "c", sample_size=10, seed=8))["diversity"]
    assert first["sample_size"] == 10
    assert first == again
    assert first["mean_pairwise_cosine_distance"] != other["mean_pairwise_cosine_distance"]


# Files -------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_writes_charts_html_and_summary(handmade_store, tmp_path):
    out = tmp_path / "report"
    figures = make_report(options(handmade_store, out))
    for chart in CHARTS:
        width, height = png_size(out / chart)
        assert width >= 800 and height >= 400, chart
    page = (out / "index.html").read_text()
    for chart in CHARTS:
        assert f'src="{chart}"' in page
    assert "5 of 5 samples were made with the LLM simulator" in page
    assert "<td>judge rejection rate</td><td>22.2% (2 of 9)</td>" in page
    assert orjson.loads((out / "summary.json").read_bytes()) == orjson.loads(orjson.dumps(figures))


# The command -------------------------------------------------------------------------------------
def stored_envelopes(data_dir: Path, topic: str) -> list[dict]:
    """Distinct stored records of a (prefixed) topic, read independently of the report."""
    rows = {row["id"]: row for row in store_rows(data_dir / "store", topic)} if (data_dir / "store" / topic).exists() \
        else {}
    return [orjson.loads(row["envelope"]) for row in rows.values()]


def test_report_command_on_a_pipeline_run(pipeline, start_simulator, tmp_path):
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = start_simulator().url
    pipeline.env["SYNTHSTREAM_STAGES__JUDGE__THRESHOLD"] = "3"  # simulated scores are random: some rejected
    pipeline.feed(tmp_path, make_texts(8), seeds=3)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=180)

    out = tmp_path / "report"
    result = pipeline.cli("report", "--out", str(out))  # the store of storage.data_dir
    assert result.stdout.decode().strip() == str(out / "index.html")
    assert "samples: " in result.stderr.decode()
    figures = orjson.loads((out / "summary.json").read_bytes())

    samples = stored_envelopes(pipeline.data_dir, f"{pipeline.prefix}samples")
    rejected = Counter(e["data"]["stage"] for e in stored_envelopes(pipeline.data_dir, f"{pipeline.prefix}rejected"))
    assert figures["samples"] == len(samples) > 0
    assert figures["samples_by_method"] == {"synthquestions": len(samples)}
    assert {stage: sum(kinds.values()) for stage, kinds in figures["rejected_by_stage"].items()} == rejected
    assert figures["rates"]["judge_rejected"] == rejected["judge"]
    kept_scores = Counter(str(e["data"]["meta"]["judge_score"]) for e in samples)
    assert {score: n for score, n in figures["judge_scores"]["kept"].items() if n} == kept_scores
    assert figures["diversity"]["sample_size"] == len(samples)
    assert 0 < figures["diversity"]["mean_pairwise_cosine_distance"] < 2
    assert f"<td>samples</td><td>{len(samples)}</td>" in (out / "index.html").read_text()
    for chart in CHARTS:
        png_size(out / chart)


def run_report(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess:
    """`synthstream report` in its own process, with only the given SYNTHSTREAM_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    return subprocess.run([*CLI, "report", *args], env={**env, **settings}, cwd=tmp_path, capture_output=True,
                          timeout=60, check=False)


def test_nothing_stored_is_a_one_line_error(tmp_path):
    (tmp_path / "empty" / "store").mkdir(parents=True)
    for data_dir in ("missing", "empty"):
        result = run_report(tmp_path, "--data-dir", str(tmp_path / data_dir))
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr.decode()
        assert lines[0].startswith("synthstream: nothing to report: no stored samples in ")
        assert not (tmp_path / data_dir / "report").exists()


def test_samples_under_another_prefix_are_pointed_out(tmp_path):
    store(tmp_path / "data" / "store", "samples", [sample(0, OTHERS[0], "glan", 5)])  # prefix synth.
    result = run_report(tmp_path, "--data-dir", str(tmp_path / "data"), SYNTHSTREAM_KAFKA__TOPIC_PREFIX="other.")
    assert result.returncode == 1
    assert "samples are stored under topic prefix 'synth.': set kafka.topic_prefix" in result.stderr.decode()
