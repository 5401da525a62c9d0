"""End-to-end behaviour under faults: real broker, real worker processes, simulator over HTTP."""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from helpers import (
    SEED_INSTRUCTIONS,
    expected_ids,
    make_texts,
    read_topic,
    stop_process,
    stored_rows,
    wait_for,
)

pytestmark = pytest.mark.slow


def export_rows(pipeline, out: Path) -> list[dict]:
    pipeline.cli("export", "--out", str(out))
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def stored_count(pipeline, topic: str) -> int:
    return len(stored_rows(pipeline.data_dir, pipeline.prefix + topic))


def test_sigkill_mid_run_then_restart_exports_every_input_exactly_once(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.5")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "4"})
    texts = make_texts(40)
    pipeline.feed(tmp_path, texts, seeds=6)

    worker = pipeline.start("run", "--no-progress")
    wait_for(lambda: stored_count(pipeline, "samples") >= 8, 60, what="first samples stored")
    stop_process(worker, signal.SIGKILL)
    stored_at_kill = stored_count(pipeline, "samples")
    assert stored_at_kill < len(texts), "the kill must land mid-run for this test to mean anything"

    restarted = pipeline.start("run", "--until-idle", "--no-progress")
    assert restarted.wait(timeout=120) == 0, pipeline.log_of(restarted)

    rows = export_rows(pipeline, tmp_path / "dataset.jsonl")
    roots = Counter(r["root_id"] for r in rows)
    assert all(n == 1 for n in roots.values()), [r for r, n in roots.items() if n > 1]
    assert len({r["id"] for r in rows}) == len(rows)
    # Every document ends exactly once: exported, or (rarely, when two look-alike test documents
    # gave the simulator's instruction writer the same text) rejected by dedup as a duplicate.
    dropped = {r["root_id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "rejected")}
    assert not dropped & set(roots) and len(dropped) <= 3
    assert set(roots) | dropped == expected_ids(texts)


def test_two_workers_of_one_stage_split_partitions_and_process_each_record_once(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.1")
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    workers = [pipeline.start("run", "--stage", "instruction", "--no-progress", name=f"instruction{i}")
               for i in range(2)]
    others = [arg for stage in ("attribution", "situation", "judge", "embed", "dedup", "answer", "sink")
              for arg in ("--stage", stage)]
    rest = pipeline.start("run", *others, "--no-progress", name="rest")

    def settled_assignment() -> list[set[int]] | None:
        latest = []
        for w in workers:
            found = re.findall(r"instruction: assigned partitions (.*)", pipeline.log_of(w))
            if not found:
                return None
            latest.append({int(p) for p in re.findall(r"\[(\d+)\]", found[-1])})
        union = set().union(*latest)
        return latest if union == {0, 1, 2, 3} and not latest[0] & latest[1] else None

    assignment = wait_for(settled_assignment, 60, what="both workers holding disjoint partitions")
    assert all(assignment), assignment

    texts = make_texts(40)
    pipeline.feed(tmp_path, texts, seeds=6)
    wait_for(lambda: stored_count(pipeline, "samples") + stored_count(pipeline, "rejected") >= len(texts), 120,
             what="every document stored as a sample or a rejection")
    for proc in (*workers, rest):
        assert stop_process(proc) == 0

    processed = []
    for w in workers:
        line = re.findall(r"processed records by partition: (.*)", pipeline.log_of(w))[-1]
        processed.append({int(p): int(n) for p, n in re.findall(r"p(\d+)=(\d+)", line)})
    assert all(sum(p.values()) > 0 for p in processed), processed
    assert not set(processed[0]) & set(processed[1]), "a partition was processed by both workers"
    assert sum(sum(p.values()) for p in processed) == len(texts)

    rows = export_rows(pipeline, tmp_path / "dataset.jsonl")
    dropped = [r["root_id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "rejected")]
    assert sorted([r["root_id"] for r in rows] + dropped) == sorted(expected_ids(texts))


def test_llm_faults_end_in_storage_or_dlq_with_reason_and_counts_add_up(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--error-rate", "0.2", "--malformed-rate", "0.1", "--seed", "11")
    # One try per call and per record, so faults reach the dlq often enough to check both paths.
    # The run passes unless a stage dead-letters everything: ~28% of records per stage fail here.
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__MAX_RETRIES": "0",
                         "SYNTHSTREAM_LLM__REASKS": "0", "SYNTHSTREAM_RUN__MAX_DLQ_SHARE": "1"})
    for stage in ("ATTRIBUTION", "SITUATION", "INSTRUCTION", "JUDGE", "ANSWER"):
        pipeline.env[f"SYNTHSTREAM_STAGES__{stage}__ATTEMPTS"] = "1"
    texts = make_texts(30)
    pipeline.feed(tmp_path, texts, seeds=10)
    run = pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
    assert run.returncode == 0

    def roots(topic: str) -> list[str]:
        return [r["root_id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + topic)]

    dead = [orjson.loads(r["envelope"]) for r in stored_rows(pipeline.data_dir, pipeline.prefix + "dlq")]
    dead_roots = [d["root_id"] for d in dead]
    # Every input ends exactly once: a document as a sample or a dead letter, a seed as an
    # attributed seed or a dead letter (nothing is rejected: thresholds are 0 here).
    endings = Counter(roots("samples") + roots("seeds.attributed") + dead_roots + roots("rejected"))
    assert set(endings) == expected_ids(texts) | expected_ids(SEED_INSTRUCTIONS[:10])
    assert all(n == 1 for n in endings.values()), [r for r, n in endings.items() if n > 1]
    assert roots("samples") and dead, "with 28% failing calls both outcomes must occur"
    for letter in dead:
        data = letter["data"]
        assert data["stage"] in {"attribution", "situation", "instruction", "judge", "answer"}
        assert data["attempts"] == 1 and data["error"]
        assert data["input"]["root_id"] == letter["root_id"]
    reasons = {d["data"]["error_type"] for d in dead}
    assert reasons == {"LLMUnavailableError", "LLMOutputError"}, reasons


def test_bad_feed_lines_are_reported_and_good_lines_arrive(pipeline, broker, tmp_path):
    good = make_texts(5)
    lines = [
        orjson.dumps({"text": good[0]}),
        b'{"text": "unterminated',
        orjson.dumps({"text": good[1]}),
        orjson.dumps({"text": "   "}),
        b"\x89PNG\r\x1a\x00\x00\x00\rIHDR\xff\xfe\x00\x10binary",
        orjson.dumps({"text": good[2]}),
        orjson.dumps({"text": "x" * (5 * 1024 * 1024)}),
        orjson.dumps({"text": good[3]}),
        b"[1, 2, 3]",
        orjson.dumps({"text": good[4]}),
    ]
    path = tmp_path / "crawl.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = tmp_path / "report.json"
    result = pipeline.cli("feed", "docs", str(path), "--report", str(report))
    err = result.stderr.decode()
    for line_no in (2, 4, 5, 7, 9):
        assert f"{path}:{line_no}:" in err, err
    bad = orjson.loads(report.read_bytes())["bad"]
    assert [b["location"] for b in bad] == [f"{path}:{n}" for n in (2, 4, 5, 7, 9)]
    assert "fed 5 records" in err

    docs = read_topic(broker.bootstrap_servers, pipeline.prefix + "docs")
    assert {d["id"] for d in docs} == expected_ids(good)
    assert {d["data"]["source"] for d in docs} == {f"{path}:{n}" for n in (1, 3, 6, 8, 10)}


def test_sigterm_drains_in_flight_and_restart_reprocesses_nothing_stored(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "1.0")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "6"})
    texts = make_texts(30)
    pipeline.feed(tmp_path, texts, seeds=4)

    worker = pipeline.start("--log-level", "debug", "run", "--no-progress")
    wait_for(lambda: stored_count(pipeline, "samples") >= 4, 90, what="first samples stored")
    assert stop_process(worker, signal.SIGTERM) == 0
    log = pipeline.log_of(worker)
    drained = [int(n) for n in re.findall(r"stage \w+: draining (\d+) in-flight records", log)]
    assert sum(drained) > 0, log[-3000:]
    assert "not finished by the drain deadline" not in log
    stored_before = stored_count(pipeline, "samples")
    assert stored_before < len(texts)

    restarted = pipeline.start("run", "--until-idle", "--no-progress")
    assert restarted.wait(timeout=120) == 0, pipeline.log_of(restarted)
    rows = stored_rows(pipeline.data_dir, pipeline.prefix + "samples")
    # Raw storage, not the deduplicated export: a reprocessed record would appear twice here.
    ids = Counter(r["id"] for r in rows)
    assert all(n == 1 for n in ids.values())
    dropped = [r["root_id"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "rejected")]
    assert sorted([r["root_id"] for r in rows] + dropped) == sorted(expected_ids(texts))
