"""LLM access for stages: one HTTP session per endpoint, shared limits, retries,
structured output validated into pydantic models with bounded re-asks, usage accounting and a
response cache.

Failure policy (the stage runtime retries or dead-letters whatever escapes from here):
- 429: wait the server's Retry-After (every caller of the endpoint pauses), then retry;
- 5xx, timeouts, connection errors: back off with jitter, retry;
- an error naming response_format: the next structured dialect down (auto), else raised at once;
- an error naming the context length: LLMContextError with the window and prompt size the server
  gave (the runtime cuts the prompt and asks again); the window is remembered, so a reply asked
  again with more room never asks for more than fits;
- timeouts: each request may take `llm.timeout` or, when longer, its max_tokens at the endpoint's
  tokens/s (configured, else measured) twice over; after a timeout the next try waits as long as
  the one abandoned (the server may still be generating it: a retry at once would queue behind
  it) and may take twice as long;
- `finish_reason=length`: asked once more with max_tokens doubled up to `max_tokens_cap`, then raised;
- output that is not JSON, fails the schema or the content checks (empty, the prompt repeated, too
  few words): re-ask with the error, up to `reasks` times, varying the sampling on a repeated reply;
- other 4xx (bad request, auth): raised at once, a retry would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, TypeVar

import aiohttp
import orjson
import yarl
from pydantic import BaseModel, ValidationError

from streamer import metrics
from streamer.backoff import jittered_backoff
from streamer.config import LLMSettings
from streamer.llm import context, dialects, roles
from streamer.llm.batch import BatchLane, BatchRecords
from streamer.llm.cache import ResponseCache, cache_key
from streamer.llm.fingerprint import SIMULATOR_FINGERPRINT
from streamer.llm.limits import EndpointLimits
from streamer.llm.prices import Prices
from streamer.llm.replies import content_problem, extract_json, without_reasoning
from streamer.llm.results import (  # noqa: F401 - callers import the errors from here too
    LLMContextError,
    LLMError,
    LLMOutputError,
    LLMRequestError,
    LLMPermanentError,
    LLMResult,
    LLMTruncatedError,
    LLMUnavailableError,
)

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 120.0
SPEED_SAMPLES = 16  # replies whose tokens/s size later timeouts: the slowest of these counts
MIN_SPEED_TOKENS = 32  # shorter replies say more about latency than about speed
PROBE_STAGE = "llm-probe"  # the stage label of the system-role probe's request
DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what the OpenAI SDK uses when none is set

T = TypeVar("T", bound=BaseModel)


@dataclass
class _Attempt:
    content: str
    finish_reason: str | None
    model: str
    simulated: bool
    prompt_tokens: int
    completion_tokens: int


class LLMPool:
    """Per-process owner of HTTP clients, endpoint limits and the response cache."""

    def __init__(self, cache: ResponseCache | None = None, prices: Prices | None = None,
                 batches: BatchRecords | None = None) -> None:
        self.cache = cache
        self.prices = prices or Prices()
        self.batches = batches  # durable batch records for stages in batch mode (streamer.llm.batch)
        self._lanes: dict[tuple[str, str | None, str, str], BatchLane] = {}
        self._clients: dict[tuple[str | None, str], _Endpoint] = {}
        self._batch_clients: dict[tuple[str | None, str], Any] = {}  # openai.AsyncOpenAI, for the batch API
        self._limits: dict[tuple[str | None, str], EndpointLimits] = {}
        self._dialects: dict[tuple[str | None, str, str], dialects.DialectChoice] = {}
        self._roles: dict[tuple[str | None, str, str], roles.RoleChoice] = {}
        self._speeds: dict[tuple[str | None, str], list[float]] = {}  # recent tokens/s of replies
        self.context_limits: dict[tuple[str | None, str], int] = {}  # windows servers have named

    def client(self, settings: LLMSettings, stage: str, cache_scope: str = "") -> LLMClient:
        return LLMClient(self, settings, stage, cache_scope)

    def endpoint(self, settings: LLMSettings) -> _Endpoint:
        """The HTTP endpoint of `settings` (one session per base URL and key)."""
        api_key = settings.resolved_api_key()
        key = (settings.base_url, api_key)
        if key not in self._clients:
            self._clients[key] = _Endpoint(settings.base_url, api_key, settings.timeout)
        return self._clients[key]

    def _batch_api(self, settings: LLMSettings) -> Any:
        """The OpenAI SDK's client, for the batch lane's files and batches (imported only there)."""
        import openai

        api_key = settings.resolved_api_key()
        key = (settings.base_url, api_key)
        if key not in self._batch_clients:
            # Retries are the lane's own (it polls and resubmits), so the SDK must not add its own.
            self._batch_clients[key] = openai.AsyncOpenAI(base_url=settings.base_url, api_key=api_key, max_retries=0,
                                                          timeout=settings.timeout)
        return self._batch_clients[key]

    def limits(self, settings: LLMSettings) -> EndpointLimits:
        # Providers meter quotas per model on an endpoint.
        key = (settings.base_url, settings.model)
        if key not in self._limits:
            self._limits[key] = EndpointLimits(
                requests_per_minute=settings.requests_per_minute,
                tokens_per_minute=settings.tokens_per_minute,
                max_in_flight=settings.max_in_flight,
            )
            # Said once per endpoint and model, so a slow run is never limited unannounced.
            log.info("llm %s, model %s: %s", settings.base_url or "(no base_url)", settings.model,
                     self._limits[key].describe())
        return self._limits[key]

    def dialect(self, settings: LLMSettings) -> dialects.DialectChoice:
        """How this endpoint and model are asked for JSON, found once for the process."""
        key = (settings.base_url, settings.model, settings.structured)
        if key not in self._dialects:
            where = f"llm {settings.base_url or '(no base_url)'}, model {settings.model}"
            self._dialects[key] = dialects.DialectChoice(settings.structured, where)
        return self._dialects[key]

    def role(self, settings: LLMSettings) -> roles.RoleChoice:
        """Where this endpoint and model get the system message, found once for the process."""
        key = (settings.base_url, settings.model, settings.system_role)
        if key not in self._roles:
            self._roles[key] = roles.RoleChoice(settings.system_role,
                                                f"llm {settings.base_url or '(no base_url)'}, model {settings.model}")
        return self._roles[key]

    def note_speed(self, settings: LLMSettings, completion_tokens: int, seconds: float) -> None:
        if completion_tokens >= MIN_SPEED_TOKENS and seconds > 0:
            speeds = self._speeds.setdefault((settings.base_url, settings.model), [])
            speeds.append(completion_tokens / seconds)
            del speeds[:-SPEED_SAMPLES]

    def timeout_for(self, settings: LLMSettings, max_tokens: int) -> float:
        """`llm.timeout`, or max_tokens at the endpoint's speed twice over when that is longer."""
        speed = settings.tokens_per_second or min(self._speeds.get((settings.base_url, settings.model)) or [0.0])
        return max(settings.timeout, 2 * max_tokens / speed) if speed else settings.timeout

    def lane(self, settings: LLMSettings, stage: str, scope: str = "") -> BatchLane:
        """The stage's batch lane on this endpoint and model (one per process and cache scope)."""
        key = (stage, settings.base_url, settings.model, scope)
        if key not in self._lanes:
            if self.batches is None:
                self.batches = BatchRecords(":memory:")  # no data dir (tests, tools): records live with the process
            self._lanes[key] = BatchLane(self._batch_api(settings), settings, stage, self.batches, self.prices, scope)
        return self._lanes[key]

    async def close(self) -> None:
        for choice in self._roles.values():
            await choice.close()
        for lane in self._lanes.values():
            await lane.close()
        if self.batches is not None:
            self.batches.close()
        for client in [*self._clients.values(), *self._batch_clients.values()]:
            await client.close()
        self._clients.clear()
        self._batch_clients.clear()
        if self.cache is not None:
            self.cache.close()


class LLMClient:
    """What a stage sees: `complete()` for text, `structured()` for a validated pydantic model."""

    def __init__(self, pool: LLMPool, settings: LLMSettings, stage: str, cache_scope: str = "") -> None:
        self.pool = pool
        self.settings = settings
        self.stage = stage
        # Cached answers are shared only within a scope: a stage run under a new version must
        # ask again, or it would only repeat the old texts under new ids.
        self.cache_scope = cache_scope
        self.endpoint = settings.base_url or "default"
        self.limits = pool.limits(settings)
        self.lane = pool.lane(settings, stage, cache_scope) if settings.mode == "batch" else None

    @property
    def model(self) -> str:
        return self.settings.model

    def _params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        params = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.seed is not None:
            params["seed"] = s.seed
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    async def complete(self, messages: list[dict[str, str]], *, min_words: int = 0, **params: Any) -> LLMResult:
        """Text; a reply with fewer than `min_words` real words (or empty, or the prompt repeated)
        is asked again, then fails."""
        return await self._run(messages, self._params(params), None, min_words)

    async def structured(self, messages: list[dict[str, str]], model: type[T], **params: Any) -> LLMResult:
        """Ask for JSON matching `model`'s schema; `result.parsed` is a validated instance."""
        return await self._run(messages, self._params(params), model, 0)

    async def once(self, messages: list[dict[str, str]], **params: Any) -> LLMResult:
        """One reply as the server gives it, the messages sent as they are: no cache, re-asks,
        truncation retry or content checks (for probes such as `llm check`; server errors are still
        retried, and a context-length error is still LLMContextError)."""
        attempt = await self._send(messages, self._params(params), {})
        return LLMResult(attempt.content, attempt.model, attempt.simulated, False, attempt.prompt_tokens,
                         attempt.completion_tokens)

    async def _run(self, messages: list[dict[str, str]], params: dict[str, Any],
                   response_model: type[BaseModel] | None, min_words: int) -> LLMResult:
        schema = _schema_of(response_model) if response_model else None
        key = cache_key(self.model, messages, {**params, "schema": schema}, self.cache_scope)
        cache = self.pool.cache if self.settings.cache else None
        if cache is not None and (hit := cache.get(key)) is not None:
            try:
                parsed = _parse(hit["content"], response_model) if response_model else None
            except (ValueError, ValidationError):
                pass  # a stale entry from an older schema: ask again
            else:
                self._count("cache_hit")
                return LLMResult(hit["content"], hit["model"], hit["simulated"], True, parsed=parsed)
        if response_model is None:
            result = await self._ask(messages, params, None, {}, min_words=min_words)
        else:
            result = await self._structured(messages, params, response_model)
        if cache is not None:
            cache.put(key, {"content": result.content, "model": result.model, "simulated": result.simulated})
        return result

    async def _structured(self, messages: list[dict[str, str]], params: dict[str, Any],
                          response_model: type[BaseModel]) -> LLMResult:
        """Asked in the endpoint's dialect. While it is still being found (auto), one request at a
        time asks (the others wait for its answer instead of all being refused together), and a
        refused or ignored response_format moves every caller one rung down the ladder."""
        choice = self.pool.dialect(self.settings)
        while True:
            # Not one at a time in the batch lane: a batch answers in minutes or hours, and batch
            # APIs take response_format as their online endpoints do.
            if choice.settled or self.lane is not None:
                result = await self._in_dialect(choice, messages, params, response_model)
            else:
                async with choice.finding:
                    if choice.settled:
                        continue  # found while this request waited
                    result = await self._in_dialect(choice, messages, params, response_model)
            if result is not None:
                return result

    async def _in_dialect(self, choice: dialects.DialectChoice, messages: list[dict[str, str]],
                          params: dict[str, Any], response_model: type[BaseModel]) -> LLMResult | None:
        """The answer in the current dialect; None when the server refused or ignored it and the
        choice stepped down (ask again)."""
        dialect = choice.current
        messages_sent, extra = dialects.request_for(dialect, messages, response_model.__name__,
                                                    _grammar_schema_of(response_model))
        try:
            result = await self._ask(messages_sent, params, response_model, extra, probing=choice.can_step_down())
        except _FormatNotUsable as exc:
            if choice.step_down(dialect, str(exc)):
                return None
            raise LLMRequestError(f"structured output ({dialect}) not usable with this server: {exc}") from None
        choice.settle(dialect)
        return result

    async def _ask(self, messages: list[dict[str, str]], params: dict[str, Any],
                   response_model: type[BaseModel] | None, extra: dict[str, Any], *,
                   probing: bool = False, min_words: int = 0) -> LLMResult:
        """One answer, re-asked with the reason while it is unusable."""
        params = dict(params)  # the re-asks may widen max_tokens or vary the sampling
        conversation = list(messages)
        usage = [0, 0]
        last_error = ""
        previous: str | None = None
        for ask in range(self.settings.reasks + 1):
            attempt = await self._request_whole(conversation, params, extra)
            usage[0] += attempt.prompt_tokens
            usage[1] += attempt.completion_tokens
            try:
                if (problem := content_problem(attempt.content, conversation, min_words)) is not None:
                    raise _Unusable(problem)
                parsed = _parse(attempt.content, response_model) if response_model else None
            except (ValueError, ValidationError) as exc:
                if probing and ask == 0 and "{" not in attempt.content:
                    raise _FormatNotUsable(f"the reply ignored it: {attempt.content[:80]!r}") from None
                last_error = _short_error(exc)
                self._count("invalid_output")
                log.debug("stage %s: output unusable (ask %d): %s", self.stage, ask + 1, last_error)
                conversation = [*messages, {"role": "assistant", "content": attempt.content[:4000]},
                                {"role": "user", "content": _reask_message(last_error, response_model)}]
                if attempt.content == previous:
                    _vary(params, ask)  # the same reply again: a model at low temperature repeats itself
                previous = attempt.content
                if ask < self.settings.reasks:
                    self._count("reask")
                continue
            return LLMResult(attempt.content, attempt.model, attempt.simulated, False, usage[0], usage[1], parsed)
        what = f"schema {response_model.__name__}" if response_model else "the content checks"
        raise LLMOutputError(f"output failed {what} after {self.settings.reasks + 1} asks: {last_error}")

    async def _request_whole(self, messages: list[dict[str, str]], params: dict[str, Any],
                             extra: dict[str, Any]) -> _Attempt:
        """A reply not cut at max_tokens: once cut, asked again with max_tokens doubled (up to
        llm.max_tokens_cap; `params` keep the room for later re-asks); cut again, it fails."""
        attempt = await self._request(messages, params, extra)
        cap = self.settings.max_tokens_cap
        if (window := self.pool.context_limits.get((self.settings.base_url, self.model))) and attempt.prompt_tokens:
            cap = min(cap, window - attempt.prompt_tokens - max(16, window // 32))  # more would not fit
        if attempt.finish_reason == "length" and int(params.get("max_tokens") or cap) < cap:
            params["max_tokens"] = min(cap, 2 * int(params["max_tokens"]))
            first = attempt
            attempt = await self._request(messages, params, extra)
            attempt.prompt_tokens += first.prompt_tokens
            attempt.completion_tokens += first.completion_tokens
        if attempt.finish_reason == "length":
            raise LLMTruncatedError(f"truncated at {params.get('max_tokens')} tokens (finish_reason=length; "
                                    f"llm.max_tokens_cap is {cap})")
        return attempt

    async def _request(
        self, messages: list[dict[str, str]], params: dict[str, Any], extra: dict[str, Any]
    ) -> _Attempt:
        """One reply, with the system message where this endpoint and model take it. While that is
        still being found out (auto), requests go as they are beside the probe and are sent again,
        merged, only if the probe finds the system message dropped: a server that keeps it waits
        for nothing."""
        if self.lane is not None:  # batch mode: queued into a batch file, answered when its batch is done
            # No probe here: a batch answers in minutes to hours; "auto" sends the system message as it is.
            batched = roles.merged(messages) if self.settings.system_role == "user" else messages
            attempt = self._attempt_from(await self.lane.request({"model": self.model, "messages": batched,
                                                                  **params, **extra}))
            self._count("truncated" if attempt.finish_reason == "length" else "ok")
            return attempt
        choice = self.pool.role(self.settings)
        if choice.mode is None and (found := self._known_role()) is not None:
            choice.settle(found)  # found by an earlier process on this data dir
        if choice.mode is None:
            probe = choice.probe(self._probe_system_role)
            try:
                attempt = await self._send(messages, params, extra)
            except LLMRequestError as exc:  # a template that refuses the system role, as the probe will find
                if not roles.refuses_system(str(exc)) or await probe != "user":
                    raise
            else:
                if await probe != "user":
                    return attempt
        return await self._send(roles.merged(messages) if choice.mode == "user" else messages, params, extra)

    async def _send(
        self, messages: list[dict[str, str]], params: dict[str, Any], extra: dict[str, Any]
    ) -> _Attempt:
        http = self.pool.endpoint(self.settings)
        estimate = sum(len(m["content"]) for m in messages) // 4 + int(params.get("max_tokens", 0))
        timeout = self.pool.timeout_for(self.settings, int(params.get("max_tokens") or self.settings.max_tokens))
        last = "no attempt made"
        backoff: float | None = None
        for retry in range(self.settings.max_retries + 1):
            if retry:
                await asyncio.sleep(jittered_backoff(retry) if backoff is None else backoff)
            backoff = None
            async with self._limited(estimate):
                started = time.monotonic()
                try:
                    response = await http.chat_completion(
                        {"model": self.model, "messages": messages, **params, **extra}, timeout)
                except _StatusError as exc:
                    if exc.status == 429:
                        wait = _retry_after(exc.headers) or jittered_backoff(retry + 1)
                        self.limits.pause(wait)
                        self._count("rate_limited")
                        last = f"429 rate limited (retry after {wait:.2f}s)"
                        continue
                    last = f"HTTP {exc.status}: {_api_message(exc)}"
                    max_tokens = params.get("max_tokens")
                    if (overflow := context.overflow_in(last, exc.body, max_tokens)) is not None:
                        self._count("context_exceeded")
                        if overflow.limit:
                            self.pool.context_limits[(self.settings.base_url, self.model)] = overflow.limit
                        raise LLMContextError(last, overflow.limit, overflow.prompt_tokens, max_tokens) from None
                    self._count("error")
                    if "response_format" in extra and dialects.names_response_format(last):
                        raise _FormatNotUsable(last) from None  # asking the same way again cannot help
                    if exc.status >= 500 or exc.status in (408, 409):
                        continue
                    raise LLMRequestError(last) from None
                except asyncio.TimeoutError as exc:
                    self._count("error")
                    last = f"{_connection_failure(exc)} (after {timeout:.0f}s)"
                    # The server may still be generating the abandoned request: sent again at once,
                    # the retry would queue behind it. It waits as long, and may take twice as long.
                    backoff, timeout = timeout, 2 * timeout
                    continue
                except (aiohttp.ClientError, OSError) as exc:
                    self._count("error")
                    last = _connection_failure(exc)
                    continue
                finally:
                    metrics.LLM_LATENCY.labels(self.endpoint, self.model).observe(time.monotonic() - started)
            try:
                attempt = self._attempt_from(response)
            except _NotACompletion as exc:
                self._count("error")
                last = str(exc)
                continue
            if self.limits.tokens is not None:
                self.limits.tokens.settle(estimate, attempt.prompt_tokens + attempt.completion_tokens)
            self.pool.note_speed(self.settings, attempt.completion_tokens, time.monotonic() - started)
            self._count("truncated" if attempt.finish_reason == "length" else "ok")
            return attempt
        raise LLMUnavailableError(f"{self.settings.max_retries + 1} attempts failed; last: {last}")

    def _known_role(self) -> str | None:
        """The system role an earlier probe found for this model, from the response cache."""
        cache = self.pool.cache if self.settings.cache else None
        hit = cache.get(cache_key(self.model, roles.PROBE, {"probe": "system_role"})) if cache is not None else None
        return str(hit["role"]) if hit is not None and hit.get("role") in ("system", "user") else None

    async def _probe_system_role(self) -> str | None:
        """"system" if a code word given only in the system message comes back, else "user"; None
        when the endpoint could not be asked (the next request asks again)."""
        key = cache_key(self.model, roles.PROBE, {"probe": "system_role"})
        cache = self.pool.cache if self.settings.cache else None
        # One try: an endpoint that fails it fails the request that follows too, with its own retries.
        probe = LLMClient(self.pool, self.settings.model_copy(update={"max_retries": 0}), PROBE_STAGE)
        try:
            attempt = await probe._send(roles.PROBE, {"temperature": 0.0, "max_tokens": roles.PROBE_TOKENS}, {})
        except LLMRequestError as exc:
            if not roles.refuses_system(str(exc)):
                return None
            found = "user"
        except LLMError:
            return None
        else:
            reply = without_reasoning(attempt.content)[0]
            # A reply cut short without the word tells nothing: requests stay as they are.
            found = "system" if roles.arrived(reply) or attempt.finish_reason == "length" else "user"
        if cache is not None:
            cache.put(key, {"role": found})
        return found

    @contextlib.asynccontextmanager
    async def _limited(self, estimate: int) -> AsyncIterator[None]:
        """The endpoint's slot, with the time spent waiting for it counted per stage: `status`
        shows it, so a slow run says whether it waits on its own limits (pacing, token budget,
        in-flight cap, a 429 pause) or on the server."""
        queued = time.monotonic()
        waiting: Any = metrics.LLM_LIMITER_WAITING.labels(self.stage)
        waiting.inc()
        try:
            async with self.limits.slot(estimate):
                waiting.dec()
                waiting = None
                metrics.LLM_LIMITER_WAIT.labels(self.stage).inc(time.monotonic() - queued)
                yield
        finally:
            if waiting is not None:
                waiting.dec()

    def _attempt_from(self, response: Any) -> _Attempt:
        """The reply as the server sent it (JSON). A reply that is not a chat completion at all
        counts as a server error, retried like one."""
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            raise _NotACompletion(f"not a chat completion: {str(response)[:200]!r}")
        choices = response.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens") or 0
        completion_tokens = usage.get("completion_tokens") or 0
        # Reasoning models think aloud before answering (<think>…</think>, or apart as
        # reasoning_content): never parsed, counted as the tokens they cost.
        content, thought = without_reasoning(message.get("content") or "")
        thought_tokens = min(completion_tokens, (len(thought) + len(message.get("reasoning_content") or "")) // 4)
        labels = (self.stage, self.endpoint, self.model)
        metrics.LLM_TOKENS.labels(*labels, "prompt").inc(prompt_tokens)
        metrics.LLM_TOKENS.labels(*labels, "completion").inc(completion_tokens - thought_tokens)
        if thought_tokens:
            metrics.LLM_TOKENS.labels(*labels, "reasoning").inc(thought_tokens)
        # The model that answered, as the endpoint names it (it may differ from the configured one).
        answered_by = response["model"] if isinstance(response.get("model"), str) and response["model"] else self.model
        if self.lane is None:  # the batch lane prices a batch once, when it collects it
            self.pool.prices.charge(*labels, answered_by, "online", prompt_tokens, completion_tokens)
        return _Attempt(
            content=content,
            finish_reason=choice.get("finish_reason"),
            model=answered_by,
            simulated=response.get("system_fingerprint") == SIMULATOR_FINGERPRINT,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _count(self, outcome: str) -> None:
        metrics.LLM_REQUESTS.labels(self.stage, self.endpoint, self.model, outcome).inc()


class _NotACompletion(ValueError):
    """A 200 reply whose body is not a chat completion (a misconfigured base_url, a proxy page)."""


class _FormatNotUsable(Exception):
    """The server refused the requested response_format, or answered as if it had not been asked."""


class _Unusable(ValueError):
    """A reply that can never be a sample (empty, the prompt repeated, too few words)."""


def _parse(content: str, model: type[BaseModel]) -> BaseModel:
    return model.model_validate(extract_json(content))


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
        return "; ".join(parts)
    if isinstance(exc, _Unusable):
        return str(exc)
    return f"not valid JSON: {exc}"


def _reask_message(error: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"Your previous reply could not be used: {error}. Answer the request above in full."
    return f"Your previous reply could not be used: {error}\n" + dialects.schema_instruction(_grammar_schema_of(model))


def _vary(params: dict[str, Any], ask: int) -> None:
    params["temperature"] = min(1.5, float(params.get("temperature") or 0.0) + 0.3)
    params["seed"] = int(params.get("seed") or 0) + ask + 1


def _retry_after(headers: Any) -> float | None:
    headers = headers or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(value) * scale))
        except ValueError:
            continue  # an HTTP date; fall back to backoff
    return None


_KEY_LIKE = re.compile(r"\b(sk|key|token)-[\w*.-]{4,}", re.IGNORECASE)


def masked(text: str) -> str:
    """`text` with anything shaped like a key masked: providers echo (partly masked) keys in auth
    errors, and such text ends up in logs, the dlq and `llm check`'s report."""
    return _KEY_LIKE.sub(r"\1-***", text)


def _api_message(exc: _StatusError) -> str:
    return masked(exc.message)[:300]


@functools.lru_cache(maxsize=256)
def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    # Built once per output model: pydantic would build it anew on every call.
    return model.model_json_schema()


@functools.lru_cache(maxsize=256)
def _grammar_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """What servers are sent: the schema less the limits a grammar cannot hold (checked after parsing)."""
    return dialects.grammar_friendly(_schema_of(model))


class _StatusError(Exception):
    """An HTTP error status from the endpoint, with the message its body gives (as the OpenAI SDK
    words it: "Error code: 429 - <the body's error.message>")."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.message = f"Error code: {status}"
        try:
            parsed = orjson.loads(body)
        except ValueError:
            parsed = None
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
        self.body = error  # the error object, as the SDK's APIStatusError.body (llama.cpp puts n_ctx there)
        said = error.get("message") if isinstance(error, dict) else None
        if isinstance(said, str) and said:
            self.message += f" - {said}"
        super().__init__(self.message)


def _connection_failure(exc: BaseException) -> str:
    """How a request that got no answer is logged: the SDK's words for the two cases."""
    if isinstance(exc, asyncio.TimeoutError):
        return "APITimeoutError: Request timed out."
    return f"APIConnectionError: Connection error. ({type(exc).__name__})"


def _env_proxy(url: str) -> dict[str, Any]:
    """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY, ...), as aiohttp's
    trust_env would find it, found once: trust_env reads the environment and stats ~/.netrc on
    every request (measured: 2.4% of a busy worker's CPU)."""
    try:
        proxy, auth = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:  # none set, or NO_PROXY names the host
        return {}
    return {"proxy": proxy, "proxy_auth": auth}


class _Endpoint:
    """POST /chat/completions to one OpenAI-compatible endpoint, on one aiohttp session.

    What the OpenAI SDK's generic post sent and raised (bearer auth, JSON both ways, its timeouts
    per connect and per read, retries left to LLMClient), written straight on aiohttp: the SDK's
    request and response layers (httpx models over aiohttp, option copies) cost ~0.7 ms CPU per
    request here, three quarters of the whole call (measured against the simulator)."""

    def __init__(self, base_url: str | None, api_key: str, timeout: float) -> None:
        self.base = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = self.base + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "Accept": "application/json"}
        # The SDK's organisation and project headers, from the same variables.
        for variable, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if value := os.environ.get(variable):
                self.headers[header] = value
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout, connect=timeout)
        self.proxy = _env_proxy(self.url)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created in the running loop on first use (a session belongs to its loop). No connection
        # limit of its own: EndpointLimits is the one limit on requests in flight.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def chat_completion(self, body: dict[str, Any], timeout: float | None = None) -> Any:
        """The reply's JSON (or its text, when it is not JSON); _StatusError for a 4xx/5xx answer.
        `timeout`: seconds for this request (sized from its max_tokens), else the endpoint's."""
        limit = self.timeout if timeout is None else aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout.sock_connect, sock_read=timeout, connect=self.timeout.connect)
        async with self._open().post(self.url, data=orjson.dumps(body), headers=self.headers, timeout=limit,
                                     allow_redirects=False, **self.proxy) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise _StatusError(resp.status, resp.headers, raw)
        try:
            return orjson.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")  # not a completion: _attempt_from says so

    async def get_json(self, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """(status, JSON body or None) of a GET, or a POST of `body`, to another URL of this server,
        with the endpoint's auth, headers and proxy (`llm check`'s probes: /models, /props, ...);
        status 0 and what went wrong when nothing answered."""
        data = None if body is None else orjson.dumps(body)
        try:
            async with self._open().request("GET" if body is None else "POST", url, data=data, headers=self.headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout), **self.proxy) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        try:
            return resp.status, orjson.loads(raw)
        except ValueError:
            return resp.status, None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
