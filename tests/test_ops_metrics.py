"""Watching a run: the workers' Prometheus endpoint, `synthstream status`, progress.

Real broker, the simulator over HTTP, real CLI processes; the endpoint is found the way `status`
finds it, through the registration under <data_dir>/workers/.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import urllib.request
from pathlib import Path

import orjson
import pytest
from helpers import make_texts, stop_process, wait_for, write_jsonl, write_seeds
from prometheus_client.parser import text_string_to_metric_families

from producers.counting import count_items
from streamer.runtime.progress import Progress, Snapshot, format_eta

Samples = list[tuple[str, dict[str, str], float]]


# Helpers ----------------------------------------------------------------------------------------
def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [lab for n, lab, _ in samples if n == name]


def registered_url(pipeline, proc) -> str:
    path = pipeline.data_dir / "workers" / f"{proc.pid}.json"
    wait_for(lambda: path.exists() or proc.poll() is not None, 30, what="the worker's metrics registration")
    assert proc.poll() is None, pipeline.log_of(proc)
    return orjson.loads(path.read_bytes())["url"]


def status(pipeline) -> dict:
    out = pipeline.cli("status", "--json", "--interval", "0.5", timeout=60)
    return json.loads(out.stdout)


def row(report: dict, stage: str) -> dict:
    return next(r for r in report["stages"] if r["stage"] == stage)


def feed_seeds(pipeline, tmp_path: Path, n: int) -> None:
    instructions = [f"Question {i}: {text}" for i, text in enumerate(make_texts(n))]
    pipeline.cli("feed", "seeds", str(write_jsonl(tmp_path / "seeds.jsonl", instructions, field="instruction")))


def start_worker(pipeline, *stages: str):
    args = [a for stage in stages for a in ("--stage", stage)]
    return pipeline.start("run", *args, "--metrics-port", "0", "--no-progress", name="metrics-worker")


# The metrics endpoint -------------------------------------------------------------------------
def test_metrics_endpoint_exposes_stage_and_llm_counters_that_move_during_a_run(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.3")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__ATTRIBUTION__CONCURRENCY": "2"})
    feed_seeds(pipeline, tmp_path, 30)  # ~30 x 0.3 s / 2 in flight: several seconds of work
    worker = start_worker(pipeline, "attribution", "sink")
    url = registered_url(pipeline, worker)
    assert url.startswith("http://127.0.0.1:"), url

    stage = {"stage": "attribution"}
    first = wait_for(lambda: (s := scrape(url)) and value(s, "synthstream_stage_records_done_total", **stage) >= 2 and s,
                     30, what="first records done")
    mid_run = status(pipeline)  # scrapes the same endpoint; must not disturb the group either
    second = wait_for(lambda: (s := scrape(url)) and value(s, "synthstream_stage_records_done_total", **stage)
                      >= value(first, "synthstream_stage_records_done_total", **stage) + 4 and s,
                      30, what="more records done")

    llm = {"stage": "attribution", "endpoint": sim.url, "model": "synthstream-simulator"}
    moving = [("synthstream_stage_records_in_total", stage), ("synthstream_stage_records_done_total", stage),
              ("synthstream_stage_records_out_total", {**stage, "topic": "seeds.attributed"}),
              ("synthstream_stage_latency_seconds_count", stage),
              ("synthstream_llm_requests_total", {**llm, "outcome": "ok"}),
              ("synthstream_llm_tokens_total", {**llm, "kind": "completion"}),
              ("synthstream_llm_latency_seconds_count", {"endpoint": sim.url, "model": "synthstream-simulator"}),
              ("synthstream_sink_rows_total", {"topic": "seeds.attributed"})]
    for name, labels in moving:
        assert value(second, name, **labels) > value(first, name, **labels), (name, labels)
    for name in ("synthstream_stage_attempts_failed_total", "synthstream_stage_records_dlq_total",
                 "synthstream_stage_in_flight"):
        assert stage in [{"stage": lab["stage"]} for lab in series(second, name)], name
    lags = [lab for lab in series(second, "synthstream_consumer_lag") if lab["stage"] == "attribution"]
    assert {(lab["topic"], lab["partition"]) for lab in lags} == {(f"{pipeline.prefix}seeds", str(p)) for p in range(4)}

    attribution = row(mid_run, "attribution")
    assert [w["pid"] for w in mid_run["workers"]] == [worker.pid]
    assert attribution["in_flight"] is not None and attribution["llm"]["requests"] >= 1
    assert attribution["llm"]["tokens"] > 0 and attribution["lag"]["total"] > 0

    assert stop_process(worker) == 0, pipeline.log_of(worker)
    assert not (pipeline.data_dir / "workers" / f"{worker.pid}.json").exists()
    # Neither scraping nor `status` made the group rebalance: one assignment for the whole run.
    assert pipeline.log_of(worker).count("attribution: assigned partitions") == 1


def test_rate_limited_counter_moves_when_the_simulator_enforces_a_low_rpm(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--rpm", "30")  # a burst of about one request; our client is allowed 6000/min
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    feed_seeds(pipeline, tmp_path, 8)
    worker = start_worker(pipeline, "attribution")
    url = registered_url(pipeline, worker)
    limited = {"stage": "attribution", "endpoint": sim.url, "model": "synthstream-simulator", "outcome": "rate_limited"}
    wait_for(lambda: value(scrape(url), "synthstream_llm_requests_total", **limited) > 0, 30, what="a counted 429")
    assert row(status(pipeline), "attribution")["llm"]["rate_limited"] > 0
    stop_process(worker, signal.SIGKILL)  # it would wait out the rate limit to drain


def test_a_taken_metrics_port_is_a_one_line_error(pipeline):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pipeline.cli("run", "--stage", "attribution", "--metrics-port", str(port), check=False, timeout=60)
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr.decode().strip().splitlines()[-1]


# status --------------------------------------------------------------------------------------------
def test_status_shows_lag_of_unprocessed_input_then_zero_lag_and_records_in_and_out(pipeline, start_simulator,
                                                                                     tmp_path):
    sim = start_simulator()
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    pipeline.cli("feed", "seeds", str(write_seeds(tmp_path / "seeds.jsonl", 6)))
    fed = pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "docs.jsonl", make_texts(5))))
    assert "progress (final): feed docs 5 done" in fed.stderr.decode()  # not a terminal: log lines

    before = status(pipeline)
    attribution, situation = row(before, "attribution"), row(before, "situation")
    assert attribution["lag"]["total"] == 6 and situation["lag"]["total"] == 5
    assert sum(p["lag"] for p in attribution["lag"]["partitions"]) == 6
    assert {p["topic"] for p in attribution["lag"]["partitions"]} == {f"{pipeline.prefix}seeds"}
    assert all(p["committed"] is None for p in attribution["lag"]["partitions"])
    assert attribution["in"]["total"] == 0 and attribution["dlq"] == 0
    assert before["workers"] == [] and attribution["in_flight"] is None and attribution["llm"] is None

    pipeline.cli("run", "--stage", "attribution", "--until-idle", "--no-progress", timeout=120)

    after = status(pipeline)
    attribution = row(after, "attribution")
    assert attribution["lag"]["total"] == 0
    assert attribution["in"]["total"] == 6 and attribution["out"]["total"] == 6
    assert attribution["rejected"] == 0 and attribution["dlq"] == 0
    assert row(after, "situation")["lag"]["total"] == 5  # untouched: its stage did not run
    assert row(after, "sink")["lag"]["total"] == 6  # the attributed seeds wait for the sink

    table = pipeline.cli("status", "--interval", "0.2").stdout.decode()
    assert "no worker serving metrics" in table
    line = next(line for line in table.splitlines() if line.startswith("situation"))
    assert line.split()[1] == "5"


# Progress --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m"),
                                               (400_000, ">99h")])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_progress_log_line_has_rate_and_eta_and_groups_idle_stages(caplog):
    counts = {"situation": 0.0}
    progress = Progress(lambda: [Snapshot("situation", counts["situation"], left=40, in_flight=4),
                                 Snapshot("questions", 0)], stream=io.StringIO())
    progress.rows()  # baseline
    counts["situation"] = 10.0
    progress.rates["situation"].last = (0.0, progress.rates["situation"].last[1] - 2.0)  # 10 done in 2 s
    with caplog.at_level("INFO", logger="synthstream.progress"):
        progress.emit()
    assert "situation 10 done, 5.0/s, 40 left, 4 in flight, eta 8s | idle: questions" in caplog.text


def test_feed_total_counts_lines_files_and_rows_but_not_stdin(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one document")
    (docs / "b.md").write_text("another")
    write_jsonl(docs / "c.jsonl", make_texts(7))
    (tmp_path / "tail.jsonl").write_bytes(b'{"text": "x"}\n{"text": "no newline at the end"}')
    assert count_items([str(docs), str(tmp_path / "tail.jsonl")]) == 2 + 7 + 2
    assert count_items([str(docs), "-"]) is None
