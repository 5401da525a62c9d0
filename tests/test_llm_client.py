"""The LLM client over real HTTP against the simulator: limits, retries, re-asks, cache."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from contextlib import asynccontextmanager

import pytest
from pydantic import BaseModel, Field

from streamer import metrics
from streamer.config import LLMSettings
from streamer.llm.cache import ResponseCache
from streamer.llm.client import LLMOutputError, LLMPool, LLMRequestError, LLMTruncatedError, LLMUnavailableError
from streamer.llm.dialects import LADDER as LLM_LADDER
from streamer.llm.simulator import STATS_KEY, SimulatorSettings, start_simulator


class Answer(BaseModel):
    title: str
    points: list[str] = Field(min_length=1, max_length=4)
    score: int = Field(ge=0, le=7)


@asynccontextmanager
async def simulator(**kw):
    runner, port = await start_simulator(SimulatorSettings(port=0, **kw))
    try:
        yield f"http://127.0.0.1:{port}/v1", runner.app[STATS_KEY]
    finally:
        await runner.cleanup()


async def asked(url: str) -> list[dict]:
    """The requests the simulator at `url` received lately (GET /requests)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url.removesuffix("/v1") + "/requests") as resp:
            return await resp.json()


@asynccontextmanager
async def serving(handler, path: str = "/v1/chat/completions", method: str = "POST"):
    """`handler` served on a loopback port (a stand-in for what sits at a base_url): its http://host:port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001 - the port the OS chose
    finally:
        await runner.cleanup()


def llm(url: str, **kw) -> LLMSettings:
    base = dict(base_url=url, model="synthstream-simulator", requests_per_minute=6000, cache=False,
                max_retries=2, reasks=1, api_key="sk-test-secret-abcdef", system_role="system")
    return LLMSettings(**{**base, **kw})


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": text}]


def count(stage: str, outcome: str) -> float:
    return metrics.total(metrics.LLM_REQUESTS, stage=stage, outcome=outcome)


async def test_structured_output_is_validated_marked_simulated_and_usage_counted():
    async with simulator() as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url), "t-structured")
        result = await client.structured(ask("volcanic basalt columns cooling slowly"), Answer)
        await pool.close()
    assert isinstance(result.parsed, Answer)
    assert result.simulated and not result.cached
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert metrics.total(metrics.LLM_TOKENS, stage="t-structured", kind="prompt") == result.prompt_tokens
    assert stats.completed == 1


async def test_429_honours_retry_after_with_a_pause_shared_by_all_callers():
    # One request per second, no burst: concurrent callers must wait rather than hammer.
    async with simulator(rpm=60, burst_seconds=1) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, max_retries=6), "t-429")
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(client.complete(ask(f"caller {i}")) for i in range(3)))
        elapsed = loop.time() - started
        await pool.close()
    assert len(results) == 3 and stats.completed == 3
    assert count("t-429", "rate_limited") >= 1
    # The shared pause keeps 429s to about one per waiting caller per refill, not a storm.
    assert stats.rate_limited <= 4, stats
    assert elapsed >= 1.5  # three requests at one per second


async def test_paced_client_gets_no_429_from_a_server_with_the_same_limit():
    # The server holds two seconds of quota; the client, paced per second, never exceeds it.
    async with simulator(rpm=120, burst_seconds=2) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, requests_per_minute=120), "t-paced")
        await asyncio.gather(*(client.complete(ask(f"paced {i}")) for i in range(10)))
        await pool.close()
    assert stats.completed == 10 and stats.rate_limited == 0


async def test_time_waited_on_the_own_limiter_is_counted_per_stage_and_zero_means_no_pacing():
    async with simulator() as (url, stats):
        pool = LLMPool()
        paced = pool.client(llm(url, requests_per_minute=120), "t-limiter-paced")
        free = LLMPool().client(llm(url, requests_per_minute=0), "t-limiter-free")
        await asyncio.gather(*(paced.complete(ask(f"paced {i}")) for i in range(8)),
                             *(free.complete(ask(f"free {i}")) for i in range(8)))
        await pool.close()
        await free.pool.close()
    waited = {stage: metrics.total(metrics.LLM_LIMITER_WAIT, stage=stage) for stage in ("t-limiter-paced", "t-limiter-free")}
    # 2 requests/s: the last of 8 paced calls starts about 3 s after the first, so the paced calls
    # waited seconds in all; the unpaced ones did not wait on this process at all.
    assert waited["t-limiter-paced"] > 3 and waited["t-limiter-free"] < 0.2, waited
    assert metrics.total(metrics.LLM_LIMITER_WAITING, stage="t-limiter-paced") == 0
    assert stats.completed == 16


async def test_a_200_reply_that_is_not_a_chat_completion_is_retried_then_named():
    # A base_url pointing at the wrong thing (a proxy page, another API) answers 200 with a body
    # that is no chat completion: retried like a server error, then reported with what came back.
    from aiohttp import web

    hits: list[str] = []

    async def proxy_page(request: web.Request) -> web.Response:
        hits.append(request.path)
        if len(hits) == 1:
            return web.Response(text="<html>Sign in to the proxy</html>", content_type="text/html")
        return web.json_response({"status": "ok", "detail": "not the endpoint you wanted"})

    async with serving(proxy_page) as base:
        pool = LLMPool()
        client = pool.client(llm(f"{base}/v1", max_retries=1), "t-not-completion")
        with pytest.raises(LLMUnavailableError, match="not a chat completion.*not the endpoint you wanted"):
            await client.complete(ask("hello"))
        await pool.close()
    assert len(hits) == 2 and count("t-not-completion", "error") == 2


async def test_requests_carry_the_key_as_bearer_json_and_the_organisation_and_errors_keep_the_servers_words(
        monkeypatch):
    # What an OpenAI-compatible server sees of the client (the simulator keeps no headers): the key as
    # a bearer token, a JSON body, OPENAI_ORG_ID / OPENAI_PROJECT_ID as the SDK sends them; and an
    # error answer's `error.message` in the raised error, with the key masked.
    from aiohttp import web

    seen: list[tuple[dict[str, str], dict]] = []

    async def endpoint(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        if len(seen) == 1:
            return web.json_response({"choices": [{"message": {"content": "Hello there, reader."},
                                                   "finish_reason": "stop"}], "model": "m-answered"})
        return web.json_response({"error": {"message": "Incorrect API key provided: sk-test-secr**cdef"}}, status=401)

    monkeypatch.setenv("OPENAI_ORG_ID", "org-synth")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-synth")
    async with serving(endpoint) as base:
        pool = LLMPool()
        client = pool.client(llm(f"{base}/v1/", max_retries=3, temperature=0.3), "t-headers")
        result = await client.complete(ask("hello"))
        with pytest.raises(LLMRequestError) as refused:
            await client.complete(ask("again"))
        await pool.close()
    assert result.content == "Hello there, reader." and result.model == "m-answered"
    headers, body = seen[0]
    assert headers["Authorization"] == "Bearer sk-test-secret-abcdef"
    assert headers["Content-Type"] == "application/json"
    assert headers["OpenAI-Organization"] == "org-synth" and headers["OpenAI-Project"] == "proj-synth"
    assert body["model"] == "synthstream-simulator" and body["messages"] == ask("hello") and body["temperature"] == 0.3
    assert len(seen) == 2  # a 401 is not retried
    assert str(refused.value) == "HTTP 401: Error code: 401 - Incorrect API key provided: sk-***"


async def test_an_endpoint_that_does_not_answer_is_retried_then_named():
    from streamer.processes import free_port

    pool = LLMPool()
    client = pool.client(llm(f"http://127.0.0.1:{free_port()}/v1", max_retries=1), "t-refused")
    with pytest.raises(LLMUnavailableError, match="2 attempts failed; last: APIConnectionError"):
        await client.complete(ask("x"))
    await pool.close()
    assert count("t-refused", "error") == 2


async def test_malformed_output_is_reasked_then_fails_with_the_reason():
    async with simulator(malformed_rate=1.0) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, reasks=1), "t-malformed")
        with pytest.raises(LLMOutputError, match="not valid JSON"):
            await client.structured(ask("anything"), Answer)
        await pool.close()
    assert stats.requests == 2  # the ask and one re-ask
    assert count("t-malformed", "invalid_output") == 2 and count("t-malformed", "reask") == 1


async def test_reasks_recover_from_occasional_malformed_output():
    async with simulator(malformed_rate=0.5, seed=3) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, reasks=5), "t-reask")
        results = await asyncio.gather(*(client.structured(ask(f"topic {i}"), Answer) for i in range(10)))
        await pool.close()
    assert all(isinstance(r.parsed, Answer) for r in results)
    assert count("t-reask", "invalid_output") >= 1 and stats.malformed >= 1
    assert count("t-reask", "reask") == count("t-reask", "invalid_output")  # every bad reply was asked again


async def test_server_errors_are_retried_then_raised():
    async with simulator(error_rate=1.0) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, max_retries=2), "t-500")
        with pytest.raises(LLMUnavailableError, match="3 attempts failed; last: HTTP 500"):
            await client.complete(ask("x"))
        await pool.close()
    assert stats.requests == 3


async def test_client_errors_are_not_retried():
    async with simulator() as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, max_retries=3), "t-400")
        with pytest.raises(LLMRequestError, match="HTTP 400"):
            await client.complete(ask("x"), max_tokens=0)
        await pool.close()
    assert stats.requests == 1


async def test_cache_serves_a_repeated_request_even_after_a_restart(tmp_path):
    async with simulator() as (url, stats):
        settings = llm(url, cache=True)
        pool = LLMPool(ResponseCache(tmp_path / "cache.sqlite"))
        first = await pool.client(settings, "t-cache").structured(ask("cache me"), Answer)
        again = await pool.client(settings, "t-cache").structured(ask("cache me"), Answer)
        await pool.close()
        restarted = LLMPool(ResponseCache(tmp_path / "cache.sqlite"))
        after_restart = await restarted.client(settings, "t-cache").structured(ask("cache me"), Answer)
        other = await restarted.client(settings, "t-cache").structured(ask("cache me"), Answer, temperature=0.1)
        # A stage run under a new version asks again, and its own repeats are cached.
        versioned = [await restarted.client(settings, "t-cache", cache_scope="v2").structured(ask("cache me"), Answer)
                     for _ in range(2)]
        await restarted.close()
    assert not first.cached and again.cached and after_restart.cached and not other.cached
    assert not versioned[0].cached and versioned[1].cached
    assert again.parsed == first.parsed == after_restart.parsed
    assert after_restart.simulated
    assert stats.requests == 3  # the first call, the one with different params, the new version


async def test_api_key_never_appears_in_logs_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    async with simulator(error_rate=1.0) as (url, _):
        pool = LLMPool()
        client = pool.client(llm(url, max_retries=1), "t-secret")
        with pytest.raises(LLMUnavailableError) as info:
            await client.complete(ask("x"))
        await pool.close()
    assert "sk-test-secret-abcdef" not in caplog.text
    assert "sk-test-secret-abcdef" not in str(info.value)


def _open_cache(path: str, barrier, results) -> None:
    barrier.wait()  # every process opens the new file at the same moment, as workers started together do
    try:
        ResponseCache(Path(path)).close()
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(repr(error))


def test_workers_opening_a_new_cache_at_once_all_get_it(tmp_path):
    # Seen in a suite run: two workers started together, one died with "database is locked" from
    # SQLite's switch to WAL (which does not wait out the busy timeout). 30 rounds of 4 processes.
    import multiprocessing

    context = multiprocessing.get_context("fork")
    outcomes = []
    for round_ in range(30):
        barrier, results = context.Barrier(4), context.Queue()
        path = str(tmp_path / str(round_) / "cache.sqlite")
        processes = [context.Process(target=_open_cache, args=(path, barrier, results)) for _ in range(4)]
        for process in processes:
            process.start()
        outcomes += [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
    assert outcomes == ["ok"] * 120, [o for o in outcomes if o != "ok"][:3]


# --------------------------------------------------------------------------- real servers' dialects


class Judged(BaseModel):
    analysis: str = Field(max_length=2000)
    score: int = Field(ge=0, le=7)


def dialect_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "structured output dialect" in r.getMessage()]


@pytest.mark.parametrize("server, settled", [("json_object_schema", "json_object_schema"),
                                             ("json_object", "json_object"),
                                             ("ignored", "json_object_schema")])
async def test_auto_steps_down_to_the_dialect_the_server_speaks_once_and_remembers_it(caplog, server, settled):
    caplog.set_level(logging.INFO, logger="streamer.llm")
    async with simulator(response_format=server) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url), f"t-dialect-{server}")
        first = await asyncio.gather(*(client.structured(ask(f"basalt columns {i}"), Answer) for i in range(4)))
        refused = stats.refused_format
        later = await pool.client(llm(url), "t-other-stage").structured(ask("obsidian glass"), Answer)
        requests = await asked(url)
        await pool.close()
    assert all(isinstance(r.parsed, Answer) for r in [*first, later])
    # One request finds the dialect while the others wait: one request per rung stepped down (a
    # refusal, or a reply that ignored the format), then each caller's request once.
    assert stats.requests == LLM_LADDER.index(settled) + 4 + 1
    assert refused == (0 if server == "ignored" else LLM_LADDER.index(settled))
    assert stats.refused_format == refused  # remembered: the later stage asks in the settled dialect at once
    assert dialect_logs(caplog) == [f"llm {url}, model synthstream-simulator: structured output dialect {settled}"]
    last = requests[-1]
    assert '"properties"' in last["messages"][-1]["content"]  # below json_schema the prompt carries the schema
    assert (last["response_format"] or {}).get("type") == {"json_object_schema": "json_object"}.get(settled, "json_object")


async def test_a_fixed_dialect_the_server_refuses_is_a_request_error_with_the_servers_words():
    async with simulator(response_format="json_object_schema") as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, structured="json_schema", max_retries=4), "t-fixed")
        with pytest.raises(LLMRequestError, match="HTTP 500.*Input should be 'text' or 'json_object'"):
            await client.structured(ask("x"), Answer)
        await pool.close()
    assert stats.requests == 1  # a 500 naming response_format is not retried


async def test_schemas_sent_are_grammar_friendly_and_limits_are_checked_after_parsing():
    async with simulator(response_format="json_object_schema") as (url, _):
        pool = LLMPool()
        client = pool.client(llm(url, structured="json_object_schema"), "t-grammar")
        result = await client.structured(ask("judge this"), Judged)
        sent = (await asked(url))[-1]["response_format"]["schema"]
        await pool.close()
    assert "maxLength" not in sent["properties"]["analysis"]
    assert sent["properties"]["score"] == {"maximum": 7, "minimum": 0, "title": "Score", "type": "integer"}
    assert isinstance(result.parsed, Judged)
    with pytest.raises(ValueError):
        Judged(analysis="x" * 2001, score=1)  # the limit the server was not sent still holds


async def test_replies_dressed_as_real_models_write_them_parse_without_a_reask():
    quirks = ["think", "prose", "fence", "second_object", "control_chars", "reasoning_content"]
    for dressing in (quirks, ["smart_quotes"]):
        async with simulator(quirks=dressing) as (url, stats):
            pool = LLMPool()
            stage = f"t-dressed-{len(dressing)}"
            result = await pool.client(llm(url), stage).structured(ask("granite weathering"), Answer)
            await pool.close()
        assert isinstance(result.parsed, Answer) and stats.requests == 1, dressing
    assert metrics.total(metrics.LLM_TOKENS, stage="t-dressed-6", kind="reasoning") > 0
    assert "<think>" not in result.content


@pytest.mark.parametrize("quirk, reason", [("empty", "the reply was empty"),
                                           ("echo", "the reply only repeats the prompt")])
async def test_an_empty_or_echoed_text_reply_is_reasked_with_varied_sampling_then_fails(quirk, reason):
    async with simulator(quirks=[quirk]) as (url, stats):
        pool = LLMPool()
        client = pool.client(llm(url, reasks=2, temperature=0.0, seed=7), f"t-{quirk}")
        with pytest.raises(LLMOutputError, match=reason):
            await client.complete(ask("explain how basalt columns form"))
        requests = await asked(url)
        await pool.close()
    assert stats.requests == 3
    if quirk == "empty":  # the same reply twice: the next ask is made hotter and with another seed
        assert [(r["temperature"], r["seed"]) for r in requests] == [(0.0, 7), (0.0, 7), (0.3, 9)]


async def test_a_text_reply_below_the_minimum_of_real_words_is_not_an_answer():
    async with simulator() as (url, _):
        pool = LLMPool()
        client = pool.client(llm(url, reasks=0), "t-words")
        with pytest.raises(LLMOutputError, match="real words, fewer than 500"):
            await client.complete(ask("explain how basalt columns form"), min_words=500)
        assert (await client.complete(ask("explain how basalt columns form"), min_words=3)).content
        await pool.close()


async def test_a_truncated_reply_is_asked_once_with_more_room_then_dead_lettered_with_the_length():
    async with simulator(answer_tokens=300) as (url, stats):
        pool = LLMPool()
        roomy = pool.client(llm(url, max_tokens=200, max_tokens_cap=1000), "t-trunc")
        result = await roomy.structured(ask("a long answer please"), Answer)
        sent = [r["max_tokens"] for r in await asked(url)]
        tight = pool.client(llm(url, max_tokens=200, max_tokens_cap=250), "t-trunc")
        with pytest.raises(LLMTruncatedError, match="truncated at 250 tokens"):
            await tight.structured(ask("another long answer"), Answer)
        await pool.close()
    assert isinstance(result.parsed, Answer) and sent == [200, 400]
    assert stats.truncated == 3 and count("t-trunc", "truncated") == 3


@asynccontextmanager
async def forwarding_proxy():
    """A plain HTTP forward proxy (absolute-URI requests, as clients send them to a proxy) that
    notes each URL it forwarded: what a user behind HTTP_PROXY has."""
    import aiohttp
    from aiohttp import web

    forwarded: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        forwarded.append(str(request.url))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-authorization")}
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, str(request.url), data=await request.read(),
                                       headers=headers) as resp:
                return web.Response(status=resp.status, body=await resp.read(),
                                    content_type=resp.content_type)

    async with serving(forward, "/{tail:.*}", "*") as proxy:
        yield proxy, forwarded


async def test_requests_go_through_the_proxy_the_environment_names_unless_no_proxy_names_the_host(monkeypatch):
    async with simulator() as (url, stats), forwarding_proxy() as (proxy, forwarded):
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        pool = LLMPool()
        result = await pool.client(llm(url), "t-proxy").structured(ask("proxied"), Answer)
        await pool.close()
        assert isinstance(result.parsed, Answer)
        assert forwarded == [url + "/chat/completions"]

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        pool = LLMPool()
        await pool.client(llm(url), "t-proxy").structured(ask("direct"), Answer)
        await pool.close()
        assert len(forwarded) == 1 and stats.completed == 2
