"""Watching a run: the workers' Prometheus endpoint, `synthstream status`, progress.

Real broker, the simulator over HTTP, real CLI processes; the endpoint is found the way `status`
finds it, through the registration under <data_dir>/workers/.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import socket
import urllib.request
from pathlib import Path

import orjson
import pytest
from helpers import make_texts, stop_process, wait_for, write_jsonl, write_seeds
from prometheus_client.parser import text_string_to_metric_families

from producers.paths import count_items
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
              ("synthstream_llm_cost_usd_total", {**llm, "lane": "online"}),
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
    # The simulator is priced as gpt-4o-mini: some dollars, none of them in the batch lane.
    assert attribution["llm"]["cost_usd"] > 0 and attribution["llm"]["batch_cost_usd"] == 0
    assert mid_run["cost_usd"]["total"] >= attribution["llm"]["cost_usd"] and mid_run["cost_usd"]["batch"] == 0

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
    # 10 in 2 s and the time the test itself takes (a loaded machine: a few hundredths of a second)
    line = re.search(r"situation 10 done, (\d+\.\d)/s, 40 left, 4 in flight, eta (\d+)s \| idle: questions",
                     caplog.text)
    assert line and 4.5 <= float(line.group(1)) <= 5.0 and line.group(2) in ("8", "9"), caplog.text


def test_feed_total_counts_lines_files_and_rows_but_not_stdin(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one document")
    (docs / "b.md").write_text("another")
    write_jsonl(docs / "c.jsonl", make_texts(7))
    (tmp_path / "tail.jsonl").write_bytes(b'{"text": "x"}\n{"text": "no newline at the end"}')
    assert count_items([str(docs), str(tmp_path / "tail.jsonl")]) == 2 + 7 + 2
    assert count_items([str(docs), "-"]) is None


def test_final_progress_line_shows_the_runs_average_rate_not_a_decayed_one(caplog):
    """100 records in the first ~0.4 s, then nothing for ~1.2 s: the last recent rate is about 0,
    the run's average is 100 / elapsed, and the final line must show the average."""
    import asyncio
    import re
    import time

    counts = {"attribution": 0.0}
    progress = Progress(lambda: [Snapshot("attribution", counts["attribution"], left=0)],
                        interval=0.05, stream=io.StringIO())

    async def run() -> float:
        stop = asyncio.Event()
        started = time.monotonic()
        ticker = asyncio.create_task(progress.run(stop))
        for _ in range(20):
            await asyncio.sleep(0.02)
            counts["attribution"] += 5
        await asyncio.sleep(1.2)
        stop.set()
        await ticker
        return time.monotonic() - started

    with caplog.at_level("INFO", logger="synthstream.progress"):
        elapsed = asyncio.run(run())
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress (final)")]
    assert len(final) == 1, caplog.text
    shown = float(re.search(r"attribution 100 done, ([\d.]+)/s", final[0]).group(1))
    assert shown == pytest.approx(100 / elapsed, rel=0.15), (final[0], elapsed)
    assert progress.rates["attribution"].rate < shown / 3  # the recent (decayed) rate it must not show


def test_a_stalled_stage_gets_a_line_saying_what_it_waits_for(caplog):
    counts = {"situation": 0.0}
    progress = Progress(lambda: [Snapshot("situation", counts["situation"], left=300, in_flight=16,
                                          blocked="waiting for attributed seeds (…)"),
                                 Snapshot("sink", 0, left=5, in_flight=0, blocked="")], stream=io.StringIO())
    progress.rows()
    with caplog.at_level("INFO", logger="synthstream.progress"):
        progress.emit()  # not yet: no progress for less than STALL_AFTER
        for average in progress.averages.values():
            average.changed -= 11  # 11 s without progress
        progress.emit()
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("situation: waiting for attributed seeds (…)") == 1, lines
    assert not [line for line in lines if line.startswith("sink:")]  # nothing known to wait for: no line


def test_what_a_stage_waits_for_is_judged_most_basic_first():
    from types import SimpleNamespace

    import consumers  # noqa: F401 - declares the stages, so the line can name the one writing the table
    from streamer import metrics
    from streamer.runtime.progress import blocked_on

    seeds = SimpleNamespace(name="seeds.attributed", rows={})
    member = SimpleNamespace(name="blocked-test", stage=object(), tables={"seeds.attributed": seeds},
                             broker_away=True, in_flight=16, last_lag=300)
    assert blocked_on(member) == "waiting for the broker (unreachable)"
    member.broker_away = False
    assert blocked_on(member) == ("waiting for attributed seeds (seeds.attributed is empty; "
                                  "run attribution and feed its input)")
    seeds.rows = {"s1": None}
    assert blocked_on(member) == "waiting on LLM replies (16 in flight)"
    metrics.LLM_LIMITER_WAITING.labels("blocked-test").set(3)
    try:
        assert blocked_on(member) == "waiting on the LLM limiter (3 calls held by this process's rate limits)"
    finally:
        metrics.LLM_LIMITER_WAITING.remove("blocked-test")


# Counters across restarts, and the waiting line, with real workers ------------------------------
def llm_requests(pipeline, stage: str = "attribution") -> int:
    report = status(pipeline)
    assert row(report, stage)["llm"] is not None, "no LLM counters for the stage"
    return llm_total(report, stage)


def file_requests(runs_dir: Path, pid: int, stage: str = "attribution") -> float:
    """LLM requests the run file of worker `pid` holds for the stage (0 before it has one)."""
    for path in runs_dir.glob(f"{pid}-*.json"):
        with contextlib.suppress(OSError, ValueError):  # rewritten meanwhile
            return float(((orjson.loads(path.read_bytes()).get("stages") or {}).get(stage) or {}).get("requests", 0))
    return 0.0


def llm_total(report: dict, stage: str = "attribution") -> int:
    return row(report, stage)["llm"]["requests"]


def scraped_requests(url: str) -> float:
    return value(scrape(url), "synthstream_llm_requests_total", stage="attribution")


def test_status_llm_calls_keep_counting_across_a_worker_restart(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.3")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_STAGES__ATTRIBUTION__CONCURRENCY": "2"})
    feed_seeds(pipeline, tmp_path, 60)  # ~60 x 0.3 s / 2 in flight: ~9 s of work, two workers share it

    first = start_worker(pipeline, "attribution")
    url = registered_url(pipeline, first)
    wait_for(lambda: scraped_requests(url) >= 6, 30, what="the first worker's LLM calls")
    assert stop_process(first) == 0, pipeline.log_of(first)
    after_first = llm_requests(pipeline)  # no live worker: from the first run's file
    assert after_first >= 6

    second = start_worker(pipeline, "attribution")
    url = registered_url(pipeline, second)
    wait_for(lambda: scraped_requests(url) >= 4, 30, what="the second worker's LLM calls")
    # Status scrapes the live worker; a scrape that times out on a loaded machine counts its run
    # file, which lags by up to WRITE_EVERY seconds, so the live count shows within a few samples.
    during_second = wait_for(lambda: (s := status(pipeline)) and llm_total(s) >= after_first + 4 and s, 30,
                             what="status counting the second worker's calls on top of the first's")
    live = scraped_requests(url)
    total = llm_total(during_second)
    assert total <= after_first + live, (after_first, live, total)
    assert during_second["counters"]["worker_runs"] == 1

    # A SIGKILLed worker loses at most its last few seconds of counts (its run file is written every
    # 2 s); the earlier run's stay. Killed once its file holds the calls the checks below count on.
    runs_dir = pipeline.data_dir / "workers" / "runs"
    wait_for(lambda: file_requests(runs_dir, second.pid) >= 4, 30, what="the second run's file to count its calls")
    stop_process(second, signal.SIGKILL)
    after_kill = llm_requests(pipeline)
    assert after_first + 4 <= after_kill <= total + 20, (after_first, total, after_kill)

    # A worker without an endpoint keeps its run's counters on disk too; its exit folds every ended run.
    third = pipeline.start("run", "--stage", "attribution", "--no-progress", name="no-endpoint")
    wait_for(lambda: list(runs_dir.glob(f"{third.pid}-*.json")), 30, what="the third run's counters file")
    assert stop_process(third) == 0, pipeline.log_of(third)
    runs = sorted(p.name for p in runs_dir.glob("*.json"))
    assert runs == [f"totals-{pipeline.prefix}.json".replace("/", "_")], runs
    assert llm_requests(pipeline) >= after_kill


def test_status_and_progress_say_a_situation_worker_waits_for_attributed_seeds(pipeline, start_simulator, tmp_path):
    """What a user hit: situation at '0 done, 300 left, 16 in flight' with nothing saying why."""
    sim = start_simulator()
    pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "docs.jsonl", make_texts(12))))
    worker = pipeline.start("run", "--stage", "situation", "--metrics-port", "0", name="situation")  # no attribution
    registered_url(pipeline, worker)
    expected = "waiting for attributed seeds (seeds.attributed is empty; run attribution and feed its input)"
    report = wait_for(lambda: (s := status(pipeline)) and row(s, "situation")["waiting"] and s, 40,
                      what="status saying what situation waits for")
    assert row(report, "situation")["waiting"] == expected
    assert row(report, "attribution")["waiting"] is None
    table = pipeline.cli("status", "--interval", "0.2").stdout.decode()
    assert f"situation: {expected}" in table
    wait_for(lambda: f"situation: {expected}" in pipeline.log_of(worker), 30, what="the waiting line in progress")
    stop_process(worker, signal.SIGKILL)  # it would wait out examples_wait to drain
