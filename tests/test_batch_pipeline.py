"""The batch lane in the running pipeline: judge and answer in batch mode on the simulator's batch API, real
worker processes on a real broker; a worker SIGKILLed while batches are in flight, and faulty batches."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest

from helpers import endings, envelopes, expected_ids, make_texts, stop_process, wait_for
from streamer.processes import free_port, port_open
from streamer.llm.batch import stored_batches
from streamer.llm.prices import Prices

pytestmark = pytest.mark.slow

DOCUMENTS = 60


def ledger(sim_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(sim_url.removesuffix("/v1") + "/ledger", timeout=10) as response:
        return json.loads(response.read())


def batch_env(pipeline, sim_url: str, **extra: str) -> None:
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim_url})
    for stage in ("judge", "answer"):
        key = f"SYNTHSTREAM_STAGES__{stage.upper()}__LLM__"
        pipeline.env.update({key + "MODE": "batch", key + "BATCH_MAX_AGE": "0.5", key + "BATCH_POLL_INTERVAL": "0.3",
                             key + "BATCH_MAX_REQUESTS": "25"})
    pipeline.env.update(extra)


def batch_rows(pipeline, data_dir=None) -> list[Any]:
    return stored_batches(data_dir or pipeline.data_dir, pipeline.prefix)


def dedup_rejections(pipeline) -> list[dict[str, Any]]:
    """Dedup's exact-duplicate rejections, once each: a redelivered record is stored again under its id."""
    return list({e["id"]: e for e in envelopes(pipeline, "rejected") if e["data"]["stage"] == "dedup"}.values())


def ledger_cost(charges: list[dict[str, Any]]) -> float:
    prices = Prices()
    return sum(prices.cost(c["prompt_tokens"], c["completion_tokens"], c["lane"], c["model"]) for c in charges)


def test_sigkilled_worker_re_attaches_to_its_batches_nothing_paid_twice_and_cost_matches_the_ledger(
        pipeline, start_simulator, tmp_path):
    sim = start_simulator("--batch-seconds", "5")
    batch_env(pipeline, sim.url)
    texts = make_texts(DOCUMENTS)
    pipeline.feed(tmp_path, texts, seeds=4)
    first = pipeline.start("run", "--no-progress", name="batch-worker")

    def online_done_and_batches_out() -> bool:
        # The online stages through (their counters written: SIGKILL loses up to 2 s of them), batches out.
        before = ledger(sim.url)["totals"].get("online", {}).get("requests", 0)
        time.sleep(2.5)
        pending = [r for r in batch_rows(pipeline) if r.provider_id and not r.collected]
        return before > 0 and ledger(sim.url)["totals"].get("online", {}).get("requests", 0) == before and bool(pending)

    wait_for(online_done_and_batches_out, 120, interval=0.1, what=lambda: f"batches in flight: {batch_rows(pipeline)}")
    in_flight = [r for r in batch_rows(pipeline) if r.provider_id and not r.collected]
    stop_process(first, signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL

    pipeline.cli("run", "--until-idle", "--no-progress", timeout=300)
    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended
    # A sample each (redelivered copies share ids), or now and then dedup's rejection: the simulator
    # writes instructions from the prompt's words, and two documents can get the same one.
    samples = len({e["id"] for e in envelopes(pipeline, "samples")})
    duplicates = dedup_rejections(pipeline)
    assert samples + len(duplicates) == DOCUMENTS and len(duplicates) <= 2 and not envelopes(pipeline, "dlq")

    rows = batch_rows(pipeline)
    assert {r.local_id for r in in_flight} <= {r.local_id for r in rows if r.collected}  # re-attached, not resubmitted
    assert {r.stage for r in rows} == {"judge", "answer"} and all(r.state == "completed" for r in rows)
    charges = ledger(sim.url)["charges"]
    by_lane = Counter((c["lane"], c["key"]) for c in charges)
    assert max(by_lane.values()) == 1, [k for k, n in by_lane.items() if n > 1]  # no request charged twice
    # One judge request per document and one answer per sample; a document whose instruction duplicates
    # another's asked judge the very same request (same custom_id), answered by the one charge.
    batch_charges = sum(1 for c in charges if c["lane"] == "batch")
    assert DOCUMENTS + samples - len(duplicates) <= batch_charges <= DOCUMENTS + samples, (batch_charges, samples,
                                                                                          len(duplicates))

    status = json.loads(pipeline.cli("status", "--json").stdout)
    expected = ledger_cost(charges)
    assert status["cost_usd"]["total"] == pytest.approx(expected, rel=0.01)
    assert status["cost_usd"]["batch"] == pytest.approx(ledger_cost([c for c in charges if c["lane"] == "batch"]),
                                                        rel=0.01)
    judge = next(s for s in status["stages"] if s["stage"] == "judge")
    assert judge["llm"]["batch_cost_usd"] == pytest.approx(judge["llm"]["cost_usd"]) and judge["llm"]["cost_usd"] > 0

    # The same cost in the dataset card, the report and the console.
    pipeline.cli("export", "--out", str(tmp_path / "out" / "dataset.jsonl"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Cost" in card and f"**${status['cost_usd']['total']:.4f}**" in card and "| judge |" in card
    pipeline.cli("report", "--out", str(tmp_path / "report"), timeout=300)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["llm_cost"]["total_usd"] == pytest.approx(expected, rel=0.01)
    assert summary["llm_cost"]["stages"]["answer"]["batch_cost_usd"] > 0
    assert "LLM cost by stage" in (tmp_path / "report" / "index.html").read_text()
    port = free_port()
    pipeline.start("ui", "--port", str(port), name="ui")
    wait_for(lambda: port_open("127.0.0.1", port), 60, what="synthstream ui")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/batches", timeout=60) as response:
        console = json.loads(response.read())
    assert len(console["batches"]) == len(rows) and console["open"] == 0
    assert {b["state"] for b in console["batches"]} == {"completed"}
    assert console["batch_usd"] == pytest.approx(status["cost_usd"]["batch"], rel=0.01)


def start_with_data_dir(pipeline, data_dir, *args: str, name: str):
    """A worker of the same pipeline with its own data dir: as if on another machine."""
    env = pipeline.env
    pipeline.env = {**env, "SYNTHSTREAM_STORAGE__DATA_DIR": str(data_dir)}
    try:
        return pipeline.start(*args, name=name)
    finally:
        pipeline.env = env


@pytest.mark.parametrize("survivor_starts", ["before", "after"])
def test_a_worker_on_another_machine_takes_over_a_sigkilled_workers_batches_from_the_topic(
        pipeline, start_simulator, tmp_path, survivor_starts):
    """Judge and answer on two workers with different data dirs (two machines: no SQLite shared); the one
    holding batches is SIGKILLed while they are out. The other — running beside it and handed its partitions
    mid-run (following the topic), or started after the kill (loading the topic) — finds the batches of the
    redelivered records through the `batches` topic and waits for them: nothing is paid twice."""
    sim = start_simulator("--batch-seconds", "5")
    batch_env(pipeline, sim.url)
    texts = make_texts(DOCUMENTS)
    pipeline.feed(tmp_path, texts, seeds=4)
    upstream = ("attribution", "situation", "instruction", "embed", "dedup", "sink")
    rest = pipeline.start("run", "--no-progress", *(a for s in upstream for a in ("--stage", s)), name="upstream")
    here, there = tmp_path / "machine-a", tmp_path / "machine-b"
    lanes = ("run", "--no-progress", "--stage", "judge", "--stage", "answer")
    doomed = start_with_data_dir(pipeline, here, *lanes, name="batch-a")
    if survivor_starts == "before":
        survivor = start_with_data_dir(pipeline, there, *lanes, name="batch-b")

    def doomeds_batches_out() -> list[Any]:
        return [r for r in batch_rows(pipeline, here) if r.owner_pid == doomed.pid and r.provider_id
                and not r.collected]

    wait_for(lambda: len(doomeds_batches_out()) >= 2, 180, interval=0.1,
             what=lambda: f"batch-a's batches out: {batch_rows(pipeline, here)}")
    time.sleep(0.5)  # more of its batches on their way, maybe one half-submitted
    in_flight = {r.local_id: r for r in doomeds_batches_out()}
    stop_process(doomed, signal.SIGKILL)
    assert doomed.returncode == -signal.SIGKILL
    if survivor_starts == "after":
        survivor = start_with_data_dir(pipeline, there, *lanes, name="batch-b")

    def all_ended() -> bool:
        ended = endings(pipeline)
        return set(ended) == expected_ids(texts)

    wait_for(all_ended, 300, what=lambda: f"documents ended: {len(endings(pipeline))} of {DOCUMENTS}")
    time.sleep(2)  # anything late (a duplicate) would show now
    for proc in (survivor, rest):
        stop_process(proc, signal.SIGTERM)
    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended

    charges = ledger(sim.url)["charges"]
    by_lane = Counter((c["lane"], c["key"]) for c in charges)
    assert max(by_lane.values()) == 1, [k for k, n in by_lane.items() if n > 1]  # no request charged twice
    # One judge each, one answer per sample (a document may end as dedup's exact-duplicate rejection,
    # whose judge request was its twin's: one charge for both).
    samples = len({e["id"] for e in envelopes(pipeline, "samples")})
    assert samples >= DOCUMENTS - 2
    batch_charges = sum(1 for c in charges if c["lane"] == "batch")
    assert 2 * samples <= batch_charges <= DOCUMENTS + samples, (batch_charges, samples)
    # batch-b knew batch-a's batches from the topic alone (its data dir never saw batch-a's SQLite) and
    # collected them: the redelivered records waited for them instead of going out again.
    survivors = {r.local_id: r for r in batch_rows(pipeline, there)}
    assert set(in_flight) <= set(survivors), (set(in_flight), set(survivors))
    assert all(survivors[i].collected and survivors[i].state == "completed" and survivors[i].owner_pid == doomed.pid
               for i in in_flight), [survivors[i] for i in in_flight]
    if survivor_starts == "before":
        assert any(r.owner_pid == survivor.pid for r in survivors.values())  # batch-b had batches of its own


def test_expired_batch_and_failed_requests_resubmitted_then_dead_lettered_with_the_providers_text(
        pipeline, start_simulator, tmp_path):
    sim = start_simulator("--batch-seconds", "1")
    with urllib.request.urlopen(urllib.request.Request(
            sim.url.removesuffix("/v1") + "/batch-behaviour", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"expire_next": 1, "expire_keep": 0.5, "failure_rate": 0.1, "seed": 5}).encode())) as r:
        assert r.status == 200
    # One attempt for judge: a request failing in its batch goes to the dlq at once, with the provider's error.
    batch_env(pipeline, sim.url, SYNTHSTREAM_STAGES__JUDGE__ATTEMPTS="1",
              SYNTHSTREAM_STAGES__JUDGE__LLM__BATCH_MAX_REQUESTS="100", SYNTHSTREAM_STAGES__JUDGE__LLM__BATCH_MAX_AGE="3")
    texts = make_texts(DOCUMENTS)
    pipeline.feed(tmp_path, texts, seeds=4)
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=300)

    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended
    letters = [e["data"] for e in envelopes(pipeline, "dlq")]
    judged = [d for d in letters if d["stage"] == "judge"]
    assert judged and all("simulated batch request failure" in d["error"] and "HTTP 500" in d["error"] for d in judged)
    assert len(judged) < DOCUMENTS * 0.3
    rows = [r for r in batch_rows(pipeline) if r.stage == "judge"]
    expired = [r for r in rows if r.state == "expired"]
    assert len(expired) == 1 and expired[0].completed > 0  # its finished results kept
    charges = [c for c in ledger(sim.url)["charges"] if c["lane"] == "batch"]
    assert len({c["key"] for c in charges}) == len(charges)  # the expired batch's finished requests not asked again
    judge_charges = sum(r.completed for r in rows)
    # A document that an earlier stage dead-lettered (an instruction the content checks refused) never
    # reached judge; one whose instruction duplicates another's asked the very same request (one charge).
    before_judge = [d for d in letters if d["stage"] in ("situation", "instruction")]
    twins = dedup_rejections(pipeline)
    judged_once = DOCUMENTS - len(before_judge) - len(judged)
    assert judged_once - len(twins) <= judge_charges <= judged_once, (
        judge_charges, len(judged), len(twins), [(d["stage"], d["error"][:120]) for d in letters if d["stage"] != "judge"])


def test_batch_list_shows_batches_and_cancel_dead_letters_their_requests(pipeline, start_simulator, tmp_path):
    sim = start_simulator("--batch-seconds", "30")
    # Cancelling dead-letters what the batch had not answered, often most of judge's records: the run is not
    # to be judged failed for that (run.max_dlq_share), only to end with every record accounted for.
    batch_env(pipeline, sim.url, SYNTHSTREAM_STAGES__JUDGE__LLM__BATCH_MAX_AGE="2",
              SYNTHSTREAM_STAGES__JUDGE__LLM__BATCH_MAX_REQUESTS="1000", SYNTHSTREAM_RUN__MAX_DLQ_SHARE="1")
    texts = make_texts(20)
    pipeline.feed(tmp_path, texts, seeds=4)
    worker = pipeline.start("run", "--until-idle", "--no-progress", name="batch-worker")
    wait_for(lambda: any(r.provider_id and r.stage == "judge" for r in batch_rows(pipeline)), 120,
             what="a judge batch submitted")
    listed = [json.loads(line) for line in pipeline.cli("batch", "list", "--json").stdout.splitlines()]
    assert listed and all(b["stage"] == "judge" and not b["collected"] for b in listed), listed
    out = [b for b in listed if b["batch"]]  # a later one may still be on its way to the provider
    assert out and all(b["state"] in ("validating", "in_progress") and b["batch"].startswith("batch_sim_")
                       for b in out), listed
    table = pipeline.cli("batch", "list").stdout.decode()
    assert out[0]["batch"] in table and "judge" in table

    cancelled = pipeline.cli("batch", "cancel", "--stage", "judge").stdout.decode()
    assert "cancelling" in cancelled, cancelled
    # It ends; when the cancel left more than run.max_dlq_share of judge's records unanswered (the
    # usual case), it says the run failed.
    code = worker.wait(timeout=120)
    assert code == 0 or code == 1 and "run failed: judge dead-lettered" in pipeline.log_of(worker), \
        pipeline.log_of(worker)
    # Whatever the cancelled batches left unanswered is dead-lettered once, saying why.
    ended = endings(pipeline)
    assert set(ended) == expected_ids(texts) and all(n == 1 for n in ended.values()), ended
    letters = [e["data"] for e in envelopes(pipeline, "dlq") if e["data"]["stage"] == "judge"]
    assert letters and all(d["error_type"] == "BatchCancelledError" and "cancelled" in d["error"] for d in letters)
    after = [json.loads(line) for line in pipeline.cli("batch", "list", "--json").stdout.splitlines()]
    # Cancelled, but for a batch that may have completed just before the cancel reached it.
    states = {b["state"] for b in after if b["stage"] == "judge"}
    assert "cancelled" in states and states <= {"cancelled", "completed"}, after
    assert pipeline.cli("batch", "cancel", after[0]["batch"], check=False).returncode == 1  # already over


def test_estimate_is_within_15_percent_of_the_real_runs_cost_and_tokens(pipeline, start_simulator, tmp_path):
    from streamer.ops.demo import EXAMPLES

    sim = start_simulator()
    batch_env(pipeline, sim.url)  # judge and answer in the batch lane: priced at the discount in both
    out = pipeline.cli("estimate", str(EXAMPLES / "docs"), "--seeds", str(EXAMPLES / "seeds.jsonl"), "--json",
                       timeout=300)
    estimated = json.loads(out.stdout)
    assert estimated["documents"] == 30 and estimated["sampled_documents"] == 20 and not estimated["simulated"]
    by_stage = {s["stage"]: s for s in estimated["stages"]}
    assert by_stage["judge"]["mode"] == "batch" and by_stage["judge"]["cost_usd"] == by_stage["judge"]["batch_usd"]
    before = ledger(sim.url)["totals"]
    sample_calls = sum(t["requests"] for t in before.values())
    assert sample_calls > 0 and estimated["total"]["calls"] > sample_calls  # the sample, extrapolated

    pipeline.cli("feed", "seeds", str(EXAMPLES / "seeds.jsonl"))
    pipeline.cli("feed", "docs", str(EXAMPLES / "docs"))
    pipeline.cli("run", "--until-idle", "--no-progress", timeout=300)
    status = json.loads(pipeline.cli("status", "--json").stdout)
    tokens = sum((s["llm"] or {}).get("tokens", 0) for s in status["stages"] if s["kind"] == "stage")
    cost = status["cost_usd"]["total"]
    assert estimated["total"]["tokens"] == pytest.approx(tokens, rel=0.15), (estimated["total"], tokens)
    assert estimated["total"]["cost_usd"] == pytest.approx(cost, rel=0.15), (estimated["total"], cost)
    # The run's cost is what the simulator charged it (the estimate's own calls left out).
    run_charges = ledger(sim.url)["charges"][sample_calls:]
    assert cost == pytest.approx(ledger_cost(run_charges), rel=0.01)


def test_estimate_on_the_simulator_keeps_each_stages_model_and_price(tmp_path):
    import subprocess
    import sys

    from streamer.ops.demo import EXAMPLES

    config = tmp_path / "synthstream.toml"
    config.write_text('[stages.answer.llm]\nmodel = "gpt-4o"\nmode = "batch"\n')
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env.update({"SYNTHSTREAM_CONFIG": str(config), "SYNTHSTREAM_STORAGE__DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([sys.executable, "-m", "streamer.cli", "estimate", str(EXAMPLES / "docs"), "--seeds",
                           str(EXAMPLES / "seeds.jsonl"), "--simulate", "--sample", "6", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    estimated = json.loads(done.stdout)
    assert estimated["simulated"] and estimated["sampled_documents"] == 6 and estimated["documents"] == 30
    stages = {s["stage"]: s for s in estimated["stages"]}
    answer, judge = stages["answer"], stages["judge"]
    assert answer["model"] == "gpt-4o" and answer["mode"] == "batch" and answer["records"] == 30  # judge keeps all
    # gpt-4o's price, halved in the batch lane; judge online at gpt-4o-mini's.
    assert answer["cost_usd"] == pytest.approx((answer["prompt_tokens"] * 2.5 + answer["completion_tokens"] * 10)
                                               / 1e6 * 0.5, rel=1e-3)
    assert judge["cost_usd"] == pytest.approx((judge["prompt_tokens"] * 0.15 + judge["completion_tokens"] * 0.6)
                                              / 1e6, rel=1e-3)
    assert stages["attribution"]["calls"] == 30 and estimated["total"]["batch_usd"] < estimated["total"]["online_usd"]
