"""What real model servers do besides speaking another JSON dialect, against the simulator over real
HTTP, in-process: context windows (the prompt cut to fit, what was cut on the record), chat
templates that drop the system message (found with one probe), slow servers (timeouts sized from
the request, no retry queued behind its own abandoned request), and a table whose writer
dead-letters everything (the waiting stage fails fast)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import pytest
from pydantic import BaseModel, Field

from consumers import STAGES
from consumers.payloads import AttributedSeed, Compositions
from streamer import metrics
from streamer.config import LLMSettings, Settings
from streamer.llm import context
from streamer.llm.cache import ResponseCache
from streamer.llm.client import LLMContextError, LLMPool
from streamer.llm.simulator import STATS_KEY, SimulatorSettings, start_simulator
from streamer.llm.simulator.words import count_tokens
from streamer.records import Document, DeadLetter, new_root
from streamer.runtime import outcomes
from streamer.runtime.stage import Prompt, RecordLLM
from streamer.runtime.testing import StaticTable, run_stage_async
from streamer.state.table import TopicTable


class Note(BaseModel):
    title: str
    points: list[str] = Field(min_length=1, max_length=4)


@asynccontextmanager
async def simulator(**kw):
    runner, port = await start_simulator(SimulatorSettings(port=0, **kw))
    try:
        yield f"http://127.0.0.1:{port}/v1", runner.app[STATS_KEY]
    finally:
        await runner.cleanup()


async def asked(url: str) -> list[dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url.removesuffix("/v1") + "/requests") as resp:
            return await resp.json()


def llm(url: str, **kw) -> LLMSettings:
    base = dict(base_url=url, model="synthstream-simulator", cache=False, max_retries=2, reasks=1,
                system_role="system")
    return LLMSettings(**{**base, **kw})


PROMPT = Prompt(version="t", system="You summarise documents. Reply with JSON only.",
                user="Summarise this document:\n{document}", tags=("document",))
LONG_DOCUMENT = " ".join(f"Basalt column {i} cooled slowly and cracked into hexagons." for i in range(120))


# --------------------------------------------------------------------------- context windows


@pytest.mark.parametrize("message, body, max_tokens, limit, prompt", [
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the "
     "messages, 1000 in the completion). Please reduce the length of the messages or completion.", {}, 1000,
     4096, 4000),  # OpenAI, vLLM, llama-cpp-python's server
    ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
     {}, None, 8192, 9000),
    ("'max_tokens' is too large: 1000. This model's maximum context length is 2048 tokens and your request "
     "has 1100 input tokens (1000 > 2048 - 1100).", {}, 1000, 2048, 1100),  # newer vLLM
    ("the request exceeds the available context size, try increasing it", {"n_ctx": 2048, "n_prompt_tokens": 2500,
                                                                            "type": "exceed_context_size_error"},
     512, 2048, 2500),  # llama.cpp's llama-server
    ("Requested tokens (3000) exceed context window of 2048", {}, 1000, 2048, 2000),  # llama-cpp-python direct
    ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens "
     "and 1000 `max_new_tokens`", {}, 1000, 4096, 4000),  # text-generation-inference
    ("the prompt exceeds the context window", {}, 256, None, None),  # no numbers: llm.context_tokens, or halved
])
def test_context_errors_are_read_in_each_servers_words(message, body, max_tokens, limit, prompt):
    assert context.overflow_in(message, body, max_tokens) == context.Overflow(limit, prompt)


def test_other_errors_are_not_context_errors():
    assert context.overflow_in("Input should be 'text' or 'json_object'", {}, 100) is None
    assert context.overflow_in("Invalid API key", {"code": "invalid_api_key"}, 100) is None


def test_what_fits_keeps_half_the_window_for_the_prompt_and_uses_the_configured_window_when_unsaid():
    # A completion budget above half the window is lowered first; the prompt gets the rest less a margin.
    lowered = context.fit(context.Overflow(2048, 1500), 6000, 1500, None)
    assert lowered.max_tokens == 1024 and lowered.share == pytest.approx((2048 - 1024 - 64) / 1500, abs=1e-3)
    enough = context.fit(context.Overflow(2048, 900), 3600, 1500, None)
    assert enough == context.Fit(1.0, 1024, 2048)  # the smaller completion budget alone makes it fit
    configured = context.fit(context.Overflow(None, None), 8000, 256, 1024)  # the setting, prompt ~ chars / 4
    assert configured.limit == 1024 and configured.share == pytest.approx((1024 - 256 - 32) / 2000, abs=1e-3)
    assert context.fit(context.Overflow(None, None), 8000, 256, None).share == context.UNKNOWN_LIMIT_SHARE


def test_cutting_takes_from_the_longest_blocks_first_and_leaves_the_rest_of_the_prompt_whole():
    example, document = "an example " * 100, "the document " * 300  # 1100 and 3900 characters
    messages = [{"role": "system", "content": "Be careful."},
                {"role": "user", "content": f"Examples:\n<example>\n{example}\n</example>\n"
                                            f"Read:\n<document>\n{document}\n</document>\nNow answer."}]
    total = sum(len(m["content"]) for m in messages)
    cut, what = context.cut_blocks(messages, 0.1)  # more than the document alone can give
    assert cut[0] == messages[0] and sum(len(m["content"]) for m in cut) <= 0.1 * total + 2 * len(context.CUT_MARK)
    text = cut[1]["content"]
    assert text.startswith("Examples:\n<example>\nan example") and text.endswith("</document>\nNow answer.")
    assert text.count(context.CUT_MARK) == 2 and "\n</example>\nRead:\n<document>\nthe document" in text
    assert [(b["block"], b["chars"]) for b in what["blocks"]] == [("document", len(document)),
                                                                  ("example", len(example))]
    assert context.cut_blocks([{"role": "user", "content": "no blocks here " * 100}], 0.5) is None


async def test_a_prompt_over_the_window_is_cut_to_fit_and_asked_again_with_the_cut_recorded():
    async with simulator(context_tokens=600) as (url, stats):
        pool = LLMPool()
        record_llm = RecordLLM(pool.client(llm(url, max_tokens=200), "t-context"))
        messages = PROMPT.messages(document=PROMPT.delimit(LONG_DOCUMENT, "document"))
        note = await record_llm.structured(messages, Note)
        sent = await asked(url)
        await pool.close()
    assert isinstance(note, Note)
    assert stats.context_exceeded == 1 and stats.completed == 1  # never a failure on the first overflow
    first, second = (r["messages"][-1]["content"] for r in sent)
    assert LONG_DOCUMENT in first and context.CUT_MARK in second and len(second) < len(first) / 2
    assert second.startswith("Summarise this document:\n<document>\nBasalt column 0")
    [cut] = record_llm.cuts
    assert cut["limit"] == 600 and cut["prompt_tokens"] > 600 and cut["blocks"][0]["block"] == "document"
    assert cut["blocks"][0]["chars"] == len(LONG_DOCUMENT) and cut["blocks"][0]["kept"] < len(LONG_DOCUMENT)
    assert metrics.total(metrics.LLM_REQUESTS, stage="t-context", outcome="context_exceeded") == 1


QUESTION = "Explain how basalt columns form."


async def test_a_completion_budget_over_half_the_window_is_lowered_before_any_text_is_cut():
    async with simulator(context_tokens=300) as (url, stats):
        pool = LLMPool()
        record_llm = RecordLLM(pool.client(llm(url, max_tokens=1024), "t-context-answer"))
        result = await record_llm.complete([{"role": "user", "content": QUESTION}])
        sent = [r["max_tokens"] for r in await asked(url)]
        await pool.close()
    assert result.content and sent == [1024, 150] and stats.context_exceeded == 1
    assert record_llm.cuts == [{"limit": 300, "prompt_tokens": count_tokens(len(QUESTION)), "share": 1.0,
                                "max_tokens": 150}]


async def test_a_prompt_with_nothing_to_cut_ends_with_the_servers_words():
    async with simulator(context_tokens=100) as (url, stats):
        pool = LLMPool()
        record_llm = RecordLLM(pool.client(llm(url, max_tokens=40), "t-context-nothing"))
        with pytest.raises(LLMContextError, match="maximum context length is 100 tokens"):
            await record_llm.complete([{"role": "user", "content": "Explain this: " + LONG_DOCUMENT}])
        await pool.close()
    assert stats.context_exceeded == 1  # an undelimited prompt (the instruction itself) is never cut


def seed(i: int) -> AttributedSeed:
    return AttributedSeed(instruction=f"How do I read a tide table for launch number {i}? " + "Details. " * 60,
                          keywords=["tide"], user="a paddler", motivation="safety", scene="before dawn " * 30,
                          compositions=Compositions(ability="a", knowledge="b", extra_information="c",
                                                    expected_output="d"), score=5, source="t")


async def test_situation_over_the_window_shows_fewer_examples_and_less_document_and_its_record_says_so():
    table = StaticTable([new_root(seed(i)) for i in range(3)], AttributedSeed)
    document = Document(text=LONG_DOCUMENT * 2, source="t")
    async with simulator(context_tokens=1500) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, max_tokens=300), "situation")
        [out] = await run_stage_async(STAGES["situation"], document, llm=client,
                                      config={"demo_selection": "random", "examples": 3},
                                      tables={"seeds.attributed": table})
        await pool.close()
    assert out.kind == "situation", out.data
    assert stats.context_exceeded >= 1 and stats.completed == 1
    [cut, *more] = out.lineage.details["context_cuts"]["situation"]
    before, after = cut["examples"]
    assert before == 3 and after < 3, cut
    last = (more or [cut])[-1]
    assert last["document_chars"][1] < last["document_chars"][0] <= len(document.text) + 10
    assert len(out.data["document"]) == last["document_chars"][1]  # the situation keeps the text the model saw
    assert len(out.lineage.seed_ids) == last["examples"][1]  # and names only the examples it was shown


# --------------------------------------------------------------------------- the system role


def role_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "system messages" in r.getMessage()]


@pytest.mark.parametrize("drop_system", [True, False])
async def test_auto_system_role_probes_once_and_merges_the_system_text_where_it_is_dropped(caplog, drop_system):
    caplog.set_level(logging.INFO, logger="streamer.llm")
    messages = [{"role": "system", "content": "Answer as a geologist."},
                {"role": "user", "content": "Why do basalt columns form hexagons?"}]
    merged = [{"role": "user", "content": "Answer as a geologist.\n\nWhy do basalt columns form hexagons?"}]
    async with simulator(drop_system=drop_system, latency=0.5) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, system_role="auto"), f"t-role-{drop_system}")
        first = await asyncio.gather(*(client.complete(messages, temperature=0.1 * i) for i in range(4)))
        peak = stats.peak_in_flight
        later = await client.complete(messages, temperature=0.9)
        sent = await asked(url)
        await pool.close()
    probes = [r for r in sent if "code word" in r["messages"][-1]["content"]]
    others = [r["messages"] for r in sent if r not in probes]
    assert len(probes) == 1  # one probe, however many requests came together
    # Sent as they are beside the probe: a server that keeps the system message waits for nothing.
    assert others[:4] == [messages] * 4 and peak == 5, peak
    if drop_system:  # ... and only where it is dropped are they sent again, merged, as is every later one
        assert others[4:] == [merged] * 5 and stats.requests == 10
        assert role_logs(caplog) == [f"llm {url}, model synthstream-simulator: system messages do not arrive "
                                     "(dropped or refused by the chat template): merged into the first user message"]
    else:
        assert others[4:] == [messages] and stats.requests == 6
        assert role_logs(caplog) == [f"llm {url}, model synthstream-simulator: system messages arrive"]
    assert all(r.content for r in [*first, later])
    assert metrics.total(metrics.LLM_REQUESTS, stage="llm-probe", outcome="ok") >= 1


async def test_the_system_role_finding_is_kept_in_the_response_cache_for_the_next_process(tmp_path):
    async with simulator(drop_system=True) as (url, stats):
        for _ in range(2):  # two processes, one data dir
            pool = LLMPool(ResponseCache(tmp_path / "cache.sqlite"))
            client = pool.client(llm(url, system_role="auto", cache=True), "t-role-cached")
            await client.complete([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": f"Name a volcanic rock ({_})."}])
            await pool.close()
        sent = await asked(url)
    probes = [r for r in sent if "code word" in r["messages"][-1]["content"]]
    # The first process: the probe, the request as it is beside it, then merged; the next: merged at once.
    assert len(probes) == 1 and len(sent) == 4, sent
    assert sent[-1]["messages"] == [{"role": "user", "content": "Be brief.\n\nName a volcanic rock (1)."}]


async def test_user_role_setting_merges_without_a_probe():
    async with simulator() as (url, stats):
        pool = LLMPool()
        await pool.client(llm(url, system_role="user"), "t-role-user").complete(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a rock."}])
        sent = await asked(url)
        await pool.close()
    assert [r["messages"] for r in sent] == [[{"role": "user", "content": "Be brief.\n\nName a rock."}]]


# --------------------------------------------------------------------------- slow servers


def test_timeouts_are_sized_from_max_tokens_at_the_measured_or_configured_speed():
    pool = LLMPool()
    measured = LLMSettings(base_url="http://slow", timeout=10)
    assert pool.timeout_for(measured, 1000) == 10  # nothing measured yet: the floor
    for tokens, seconds in ((400, 20.0), (100, 2.0), (10, 10.0)):  # 20 and 50 tokens/s; 10 tokens say nothing
        pool.note_speed(measured, tokens, seconds)
    assert pool.timeout_for(measured, 1000) == 100  # 1000 tokens at the slowest 20/s, twice over
    assert pool.timeout_for(measured, 50) == 10  # never below the floor
    configured = LLMSettings(base_url="http://slow", timeout=10, tokens_per_second=5)
    assert pool.timeout_for(configured, 1000) == 400


async def test_a_timed_out_request_is_not_retried_into_a_queue_behind_itself():
    async with simulator(latency=1.0) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, timeout=0.6, max_retries=2), "t-timeout")
        started = time.monotonic()
        result = await client.complete([{"role": "user", "content": "Explain how basalt columns form."}])
        took = time.monotonic() - started
        await pool.close()
    # Timed out at 0.6 s, waited as long (the abandoned request ended at 1.0 s on the server), then
    # asked with 1.2 s to answer: one request at a time on the server, and an answer.
    assert result.content and stats.requests == 2 and stats.peak_in_flight == 1
    assert 2.1 < took < 6, took  # 0.6 + 0.6 + 1.0 s, and the machine's share
    assert metrics.total(metrics.LLM_REQUESTS, stage="t-timeout", outcome="error") == 1


# --------------------------------------------------------------------------- a table that stays empty


async def test_a_stage_waiting_for_a_table_whose_writer_dead_letters_everything_fails_at_once():
    table = TopicTable(Settings(), "seeds.attributed", AttributedSeed)  # never started: stays empty
    writer = outcomes.of("attribution")
    saved = (writer.given, writer.dead, writer.last_error, writer.idle)
    table.hopeless = lambda: outcomes.hopeless(["attribution"])
    try:
        writer.given, writer.dead, writer.last_error = 3, 3, "truncated at 1500 tokens"
        writer.idle = lambda: True
        started = time.monotonic()
        [letter] = await run_stage_async(STAGES["situation"], Document(text="Tide tables.", source="t"),
                                         config={"examples_wait": 30, "demo_selection": "random"},
                                         tables={"seeds.attributed": table})
        took = time.monotonic() - started
    finally:
        writer.given, writer.dead, writer.last_error, writer.idle = saved
        await table.stop()
    assert letter.kind == DeadLetter.kind and letter.data["attempts"] == 1 and took < 5, (letter.data, took)
    assert letter.data["error"] == ("seeds.attributed will stay empty: attribution dead-lettered all 3 records it "
                                    "was given (last: truncated at 1500 tokens)")


def test_a_writer_still_reading_or_not_dead_lettering_everything_leaves_the_table_hopeful():
    writer = outcomes.Outcome("t-writer", given=3, dead=3, idle=lambda: False)
    outcomes._OUTCOMES["t-writer"] = writer  # noqa: SLF001
    try:
        assert outcomes.hopeless(["t-writer"]) is None  # still has input or records in flight
        writer.idle = lambda: True
        assert outcomes.hopeless(["t-writer"]) is not None
        writer.dead = 2
        assert outcomes.hopeless(["t-writer"]) is None
        assert outcomes.hopeless(["t-not-in-this-process"]) is None
        assert [o.stage for o in outcomes.failed_stages(["t-writer"], 0.5)] == ["t-writer"]  # 2 of 3 > half
        assert outcomes.failed_stages(["t-writer"], 0.7) == []
        writer.dead = 3
        assert [o.stage for o in outcomes.failed_stages(["t-writer"], 1.0)] == ["t-writer"]  # all: always
    finally:
        del outcomes._OUTCOMES["t-writer"]  # noqa: SLF001


async def test_a_reply_asked_again_with_more_room_never_asks_for_more_than_the_window_holds():
    async with simulator(context_tokens=600, answer_tokens=500) as (url, stats):
        pool = LLMPool()
        record_llm = RecordLLM(pool.client(llm(url, max_tokens=1000), "t-context-room"))
        result = await record_llm.complete([{"role": "user", "content": QUESTION}])
        sent = [r["max_tokens"] for r in await asked(url)]
        await pool.close()
    # 1000 is over the window (600 named): lowered to 300, cut at 300 tokens, asked again with what the
    # window still holds beside the prompt, not with twice 300 (which would overflow again).
    assert sent[:2] == [1000, 300] and 500 <= sent[2] < 600 - count_tokens(len(QUESTION)), sent
    assert len(sent) == 3 and stats.context_exceeded == 1 and stats.truncated == 1 and result.content


def test_progress_and_status_say_a_table_will_stay_empty_rather_than_that_the_stage_waits_for_it():
    from types import SimpleNamespace

    from streamer.runtime.progress import blocked_on

    seeds = SimpleNamespace(name="seeds.attributed", rows={}, hopeless=lambda: None)
    member = SimpleNamespace(name="t-hopeless", stage=object(), tables={"seeds.attributed": seeds},
                             broker_away=False, in_flight=2, last_lag=5)
    assert blocked_on(member).startswith("waiting for attributed seeds")
    seeds.hopeless = lambda: "attribution dead-lettered all 3 records it was given"
    assert blocked_on(member) == ("seeds.attributed will stay empty (attribution dead-lettered all 3 records it "
                                  "was given): its records go to the dlq")
