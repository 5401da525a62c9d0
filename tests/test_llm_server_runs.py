"""Runs against a model server that fails every record, through the real CLI on a real broker: the
run fails and says how many per stage, the stage waiting for the failing stage's table fails fast,
truncations are counted per stage in `status`; and `simulate-llm` plays the servers' dialects."""

from __future__ import annotations

import json
import time
import typing
import urllib.error
import urllib.request

import orjson

from helpers import stop_process, stored_rows
from streamer.cli.simulate import QUIRKS, RESPONSE_FORMATS
from streamer.llm.simulator import SimulatorSettings


def test_a_run_whose_stages_dead_letter_everything_fails_saying_how_many_and_waits_for_nothing(
        pipeline, start_simulator, tmp_path):
    # Every reply needs 3000 tokens and may have at most 1500: each is truncated, asked again with
    # more room, truncated again and dead-lettered. Situation then has no example seeds, ever.
    sim = start_simulator("--answer-tokens", "3000")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__MAX_TOKENS_CAP": "1500"})
    pipeline.feed(tmp_path, ["A document about tides.", "A document about basalt."], seeds=3)
    started = time.monotonic()
    run = pipeline.cli("run", "--until-idle", "--no-progress", check=False, timeout=240)
    took = time.monotonic() - started
    err = run.stderr.decode()
    assert run.returncode == 1, err[-3000:]
    failure = [line for line in err.splitlines() if line.startswith("synthstream: run failed")]
    assert failure == ["synthstream: run failed: attribution dead-lettered all 3 records it was given (last: "
                       "truncated at 1500 tokens (finish_reason=length; llm.max_tokens_cap is 1500)); situation "
                       "dead-lettered all 2 records it was given (last: seeds.attributed will stay empty: "
                       "attribution dead-lettered all 3 records it was given (last: truncated at 1500 tokens "
                       "(finish_reason=length; llm.max_tokens_cap is 1500))) (run.max_dlq_share is 0.5); "
                       "see `synthstream dlq list`"], err[-3000:]
    assert err.count("stage situation: seeds.attributed will stay empty: attribution dead-lettered all 3") == 1
    # Not a minute per document (situation.examples_wait, 60 s by default): no waiting at all.
    assert took < 45, took

    letters = [orjson.loads(r["envelope"])["data"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "dlq")]
    assert sorted((d["stage"], d["attempts"]) for d in letters) == [("attribution", 1)] * 3 + [("situation", 1)] * 2
    assert all(d["error_type"] == "RecordFailed" for d in letters if d["stage"] == "situation")

    status = json.loads(pipeline.cli("status", "--json", "--interval", "0.2", timeout=60).stdout)
    llm = {row["stage"]: row["llm"] for row in status["stages"]}
    assert llm["attribution"]["truncated"] == 6 and llm["attribution"]["requests"] == 6  # 1024, then 1500 tokens
    assert llm["situation"]["truncated"] == 0
    table = pipeline.cli("status", "--interval", "0.2", timeout=60).stdout.decode().splitlines()
    header = next(line for line in table if line.startswith("stage"))
    row = next(line for line in table if line.startswith("attribution"))
    assert "truncated" in header.split("  ")  # a column of its own, as tallied above
    columns = [c for c in header.split("  ") if c]
    assert row.split()[columns.index("truncated")] == "6", (header, row)


def test_a_stage_in_another_process_learns_that_the_table_it_waits_for_will_stay_empty(
        pipeline, start_simulator, tmp_path):
    sim = start_simulator("--answer-tokens", "3000")
    pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__MAX_TOKENS_CAP": "1500"})
    pipeline.feed(tmp_path, ["A document about tides.", "A document about basalt."], seeds=3)
    attribution = pipeline.start("run", "--stage", "attribution", "--no-progress", name="attribution")
    started = time.monotonic()
    run = pipeline.cli("run", "--stage", "situation", "--stage", "sink", "--until-idle", "--no-progress",
                       check=False, timeout=240)
    took = time.monotonic() - started
    err = run.stderr.decode()
    assert stop_process(attribution) == 0, pipeline.log_of(attribution)[-3000:]
    # The attribution worker's run file says it dead-lettered all its input and has nothing left.
    assert run.returncode == 1 and ("synthstream: run failed: situation dead-lettered all 2 records it was given "
                                    "(last: seeds.attributed will stay empty: attribution dead-lettered all 3 "
                                    "records it was given (last: truncated at 1500 tokens") in err, err[-3000:]
    assert took < 45, took  # not situation.examples_wait (60 s) per document
    assert "attribution dead-lettered all 3" in pipeline.cli("dlq", "list", "--stage", "situation").stdout.decode()


def test_simulate_llm_flags_play_a_llama_cpp_like_server(start_simulator):
    sim = start_simulator("--response-format", "json_object_schema", "--drop-system", "--context-tokens", "400",
                          "--quirk", "fence", "--quirk", "prose")

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(sim.url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    user = {"role": "user", "content": "Name a rock."}
    status, refused = post({"messages": [user], "response_format": {"type": "json_schema",
                                                                    "json_schema": {"name": "R", "schema": schema}}})
    assert status == 500 and "Input should be 'text' or 'json_object'" in refused["error"]["message"]
    status, reply = post({"messages": [user], "response_format": {"type": "json_object", "schema": schema}})
    content = reply["choices"][0]["message"]["content"]
    assert status == 200 and "```json\n{" in content and content.startswith("Sure!")
    status, overflow = post({"messages": [{"role": "user", "content": "word " * 400}], "max_tokens": 100})
    assert status == 400 and "maximum context length is 400 tokens" in overflow["error"]["message"]
    status, probe = post({"messages": [{"role": "system", "content": "The code word is OPAL-55."},
                                       {"role": "user", "content": "What is the code word?"}]})
    assert status == 200 and "OPAL-55" not in probe["choices"][0]["message"]["content"]  # the system was dropped


def test_simulate_llm_offers_every_mode_the_simulator_has():
    fields = SimulatorSettings.model_fields
    assert set(RESPONSE_FORMATS) == set(typing.get_args(fields["response_format"].annotation))
    assert set(QUIRKS) == set(typing.get_args(typing.get_args(fields["quirks"].annotation)[0]))
