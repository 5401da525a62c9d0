"""SynthQuestions end to end against a real model: llama-cpp-python's OpenAI-compatible server on
loopback serving SmolLM2-135M-Instruct (a GGUF shipped on PyPI), through the real CLI on the embedded
broker. synthstream's requests go to the server unmodified, with the README's LLM settings apart
from short replies (a CPU generates tens of tokens a second). What the client must cope with here is
real: json_schema answered 500, a grammar-held JSON object, a small model's thin answers."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import orjson
import pytest

from helpers import endings, envelopes, stored_rows
from streamer.llm import local_server

pytestmark = pytest.mark.slow

# Three short documents on distinct subjects: the shortest that still give a situation something to stand on.
DOCUMENTS = [
    "Sourdough starter is a mix of flour and water that wild yeast and lactic bacteria ferment. Fed once a "
    "day at room temperature it doubles within eight hours; kept in the fridge it needs feeding once a week. "
    "A starter that smells of nail polish is hungry, not dead: feed it twice a day until it recovers.",
    "A heat pump moves heat instead of making it. In winter it pulls warmth out of outdoor air even below "
    "freezing and pumps it indoors, delivering three to four units of heat for every unit of electricity. "
    "Its efficiency falls as the outdoor temperature drops, so cold climates need a larger unit.",
    "Tide pools form where the sea retreats from rocky shores twice a day. Animals living there, such as "
    "anemones, barnacles and hermit crabs, must survive heat, drying and changes in salinity until the "
    "water returns. Visitors should step only on bare rock and put back any stone they turn over.",
]
LLM_STAGES = ("attribution", "situation", "instruction", "judge", "answer")


def test_synthquestions_end_to_end_on_a_real_model(pipeline, llama_server, tmp_path):
    pipeline.env.update({
        "SYNTHSTREAM_LLM__BASE_URL": llama_server.base_url,
        "SYNTHSTREAM_LLM__MODEL": local_server.MODEL_NAME,
        # Room for the attribution's JSON (~250 tokens from this model) without a truncation, and a cap
        # for one retry; a grammar ends each reply when its object closes.
        "SYNTHSTREAM_LLM__MAX_TOKENS": "384",
        "SYNTHSTREAM_LLM__MAX_TOKENS_CAP": "768",
        "SYNTHSTREAM_LLM__REQUESTS_PER_MINUTE": "0",
        # The server answers one request at a time (as `llm check` finds): the others wait here, not in its
        # queue, so a timeout measures its work on one request, never the queue ahead of it. A CPU shared
        # with the rest of the suite takes up to a minute or two for a request of ~1000 prompt tokens.
        "SYNTHSTREAM_LLM__MAX_IN_FLIGHT": "1",
        "SYNTHSTREAM_LLM__TIMEOUT": "300",
        # One example seed per situation prompt (the shortest prompt that still shows one), and the
        # documents wait for the first attributed seed as long as the server takes to make it.
        "SYNTHSTREAM_STAGES__SITUATION__EXAMPLES": "1",
        "SYNTHSTREAM_STAGES__SITUATION__EXAMPLES_WAIT": "900",
    })
    pipeline.feed(tmp_path, DOCUMENTS, seeds=3)
    # The server is shared by the session (llm check's test asks it too): only this run's lines count.
    log_start = llama_server.log_path.stat().st_size
    started = time.monotonic()
    run = pipeline.cli("run", "--until-idle", "--no-progress", check=False, timeout=1500)
    took = time.monotonic() - started
    log = run.stderr.decode()

    status = json.loads(pipeline.cli("status", "--json", "--interval", "0.2", timeout=60).stdout)
    rows = {row["stage"]: row for row in status["stages"]}
    letters = [orjson.loads(r["envelope"])["data"] for r in stored_rows(pipeline.data_dir, pipeline.prefix + "dlq")]
    print(f"\nSynthQuestions on {local_server.MODEL_NAME} (llama-cpp-python {local_server.LLAMA_CPP_VERSION}), "
          f"3 documents + 3 seeds, run took {took:.0f} s (exit {run.returncode})")
    print(f"{'stage':<12}{'in':>4}{'requests':>10}{'invalid':>9}{'truncated':>11}{'re-asks':>9}{'dead letters':>14}")
    for stage in LLM_STAGES:
        llm = rows[stage]["llm"] or {}
        print(f"{stage:<12}{rows[stage]['in']['total']:>4}{llm.get('requests', 0):>10}{llm.get('invalid', 0):>9}"
              f"{llm.get('truncated', 0):>11}{llm.get('reasks', 0):>9}{rows[stage]['dlq'] or 0:>14}")
    for letter in letters:
        print(f"dead letter at {letter['stage']}: {letter['error'][:300]}")

    assert run.returncode == 0, log[-4000:]
    # The dialect was found once (json_schema refused by this server, with its words) and said once.
    settled = re.findall(r"structured output dialect (\w+)", log)
    assert settled == ["json_object_schema"], log[-4000:]
    assert log.count("json_schema not usable (HTTP 500") == 1 and "Input should be 'text' or 'json_object'" in log
    # No request answered 500 more than once per dialect: the one refusal of json_schema.
    with llama_server.log_path.open("rb") as server_file:
        server_file.seek(log_start)
        server_log = server_file.read().decode(errors="replace")
    assert len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 500', server_log)) <= 1

    # Every record ended: each seed attributed, rejected or dead-lettered; each document a sample,
    # a rejection or a dead letter, once.
    seeds_ended = Counter(e["root_id"] for e in envelopes(pipeline, "seeds.attributed"))
    seeds_ended.update(e["root_id"] for e in envelopes(pipeline, "rejected") if not e.get("lineage", {}).get("document_id"))
    seeds_ended.update(d["input"]["root_id"] for d in letters if d["stage"] == "attribution")
    assert len(seeds_ended) == 3 and set(seeds_ended.values()) == {1}, seeds_ended
    assert len(endings(pipeline)) == 3 and set(endings(pipeline).values()) == {1}, endings(pipeline)

    # Dead letters: at most 1 in 10 of the records the LLM stages were given, each with the words
    # that made it (the server's error, or what the model's reply failed).
    given = sum(rows[stage]["in"]["total"] for stage in LLM_STAGES)
    assert len(letters) * 10 <= given, (len(letters), given)
    for letter in letters:
        assert letter["error"] and ("HTTP" in letter["error"] or "output failed" in letter["error"]
                                    or "truncated at" in letter["error"]), letter["error"]
