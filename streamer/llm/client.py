"""LLM access for stages: one AsyncOpenAI client per endpoint, shared limits, retries,
structured output validated into pydantic models with bounded re-asks, usage accounting and a
response cache.

Failure policy (the stage runtime retries or dead-letters whatever escapes from here):
- 429: wait the server's Retry-After (every caller of the endpoint pauses), then retry;
- 5xx, timeouts, connection errors, `finish_reason=length`: back off with jitter, retry;
- output that is not JSON or fails the schema: re-ask with the error, up to `reasks` times;
- other 4xx (bad request, auth): raised at once, a retry would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, TypeVar

from pydantic import BaseModel, ValidationError

from streamer import metrics
from streamer.backoff import jittered_backoff
from streamer.config import LLMSettings
from streamer.llm.cache import ResponseCache, cache_key
from streamer.llm.fingerprint import SIMULATOR_FINGERPRINT
from streamer.llm.limits import EndpointLimits
from streamer.llm.results import (  # noqa: F401 - callers import the errors from here too
    LLMError,
    LLMOutputError,
    LLMRequestError,
    LLMResult,
    LLMUnavailableError,
)

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 120.0

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

    def __init__(self, cache: ResponseCache | None = None) -> None:
        self.cache = cache
        self._clients: dict[tuple[str | None, str], Any] = {}  # openai.AsyncOpenAI
        self._limits: dict[tuple[str | None, str], EndpointLimits] = {}

    def client(self, settings: LLMSettings, stage: str, cache_scope: str = "") -> LLMClient:
        return LLMClient(self, settings, stage, cache_scope)

    def _http(self, settings: LLMSettings) -> Any:
        openai = sdk()
        api_key = settings.resolved_api_key()
        key = (settings.base_url, api_key)
        if key not in self._clients:
            # Retries are ours (shared pause, jitter, accounting), so the SDK must not add its own.
            # aiohttp under the SDK: measured ~1 ms less CPU per request than its default httpx.
            self._clients[key] = openai.AsyncOpenAI(
                base_url=settings.base_url, api_key=api_key, max_retries=0, timeout=settings.timeout,
                http_client=openai.DefaultAioHttpClient(timeout=settings.timeout),
            )
        return self._clients[key]

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

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
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

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> LLMResult:
        return await self._run(messages, self._params(params), response_model=None)

    async def structured(self, messages: list[dict[str, str]], model: type[T], **params: Any) -> LLMResult:
        """Ask for JSON matching `model`'s schema; `result.parsed` is a validated instance."""
        return await self._run(messages, self._params(params), response_model=model)

    async def _run(
        self, messages: list[dict[str, str]], params: dict[str, Any], response_model: type[BaseModel] | None
    ) -> LLMResult:
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

        extra: dict[str, Any] = {}
        if response_model is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": response_model.__name__, "schema": schema, "strict": False},
            }
        conversation = list(messages)
        usage = [0, 0]
        last_error = ""
        for ask in range(self.settings.reasks + 1):
            attempt = await self._request(conversation, params, extra)
            usage[0] += attempt.prompt_tokens
            usage[1] += attempt.completion_tokens
            try:
                parsed = _parse(attempt.content, response_model) if response_model else None
            except (ValueError, ValidationError) as exc:
                last_error = _short_error(exc)
                self._count("invalid_output")
                log.debug("stage %s: output failed validation (ask %d): %s", self.stage, ask + 1, last_error)
                conversation = [*messages, {"role": "assistant", "content": attempt.content[:4000]},
                                {"role": "user", "content": _reask_message(last_error, schema)}]
                continue
            if cache is not None:
                entry = {"content": attempt.content, "model": attempt.model, "simulated": attempt.simulated}
                cache.put(key, entry)
            return LLMResult(attempt.content, attempt.model, attempt.simulated, False, usage[0], usage[1], parsed)
        raise LLMOutputError(
            f"output failed schema {response_model.__name__ if response_model else ''} after "
            f"{self.settings.reasks + 1} asks: {last_error}"
        )

    async def _request(
        self, messages: list[dict[str, str]], params: dict[str, Any], extra: dict[str, Any]
    ) -> _Attempt:
        http = self.pool._http(self.settings)  # noqa: SLF001 - pool and client are one unit
        openai = sdk()
        estimate = sum(len(m["content"]) for m in messages) // 4 + int(params.get("max_tokens", 0))
        last = "no attempt made"
        for retry in range(self.settings.max_retries + 1):
            if retry:
                await asyncio.sleep(jittered_backoff(retry))
            async with self._limited(estimate):
                started = time.monotonic()
                try:
                    # The SDK's generic post: same auth, timeouts and error types as
                    # chat.completions.create, without walking the request through its typed
                    # transforms or building pydantic models of the reply (half its CPU, measured).
                    response = await http.post("/chat/completions", cast_to=object,
                                               body={"model": self.model, "messages": messages, **params, **extra})
                except openai.RateLimitError as exc:
                    wait = _retry_after(exc.response) or jittered_backoff(retry + 1)
                    self.limits.pause(wait)
                    self._count("rate_limited")
                    last = f"429 rate limited (retry after {wait:.2f}s)"
                    continue
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    self._count("error")
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                except openai.APIStatusError as exc:
                    self._count("error")
                    last = f"HTTP {exc.status_code}: {_api_message(exc)}"
                    if exc.status_code >= 500 or exc.status_code in (408, 409):
                        continue
                    raise LLMRequestError(last) from None
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
            if attempt.finish_reason == "length":
                self._count("truncated")
                last = f"output truncated at max_tokens={params.get('max_tokens')} (finish_reason=length)"
                continue
            self._count("ok")
            return attempt
        raise LLMUnavailableError(f"{self.settings.max_retries + 1} attempts failed; last: {last}")

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
        labels = (self.stage, self.endpoint, self.model)
        metrics.LLM_TOKENS.labels(*labels, "prompt").inc(prompt_tokens)
        metrics.LLM_TOKENS.labels(*labels, "completion").inc(completion_tokens)
        return _Attempt(
            content=message.get("content") or "",
            finish_reason=choice.get("finish_reason"),
            # The model that answered, as the endpoint names it (it may differ from the configured one).
            model=response["model"] if isinstance(response.get("model"), str) and response["model"] else self.model,
            simulated=response.get("system_fingerprint") == SIMULATOR_FINGERPRINT,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _count(self, outcome: str) -> None:
        metrics.LLM_REQUESTS.labels(self.stage, self.endpoint, self.model, outcome).inc()


class _NotACompletion(ValueError):
    """A 200 reply whose body is not a chat completion (a misconfigured base_url, a proxy page)."""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _parse(content: str, model: type[BaseModel]) -> BaseModel:
    # Many servers wrap JSON in a Markdown fence even when asked for JSON only.
    if match := _FENCE.match(content):
        content = match.group(1)
    return model.model_validate(json.loads(content))


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
        return "; ".join(parts)
    return f"not valid JSON: {exc}"


def _reask_message(error: str, schema: dict[str, Any] | None) -> str:
    return (
        "Your previous reply could not be used: " + error + "\n"
        "Reply again with only a JSON object that matches this JSON schema, no prose, no code fence:\n"
        + json.dumps(schema, separators=(",", ":"))
    )


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
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


def _api_message(exc: Any) -> str:  # openai.APIStatusError
    # Providers echo (partly masked) keys in auth errors; such text ends up in logs and dlq.
    return _KEY_LIKE.sub(r"\1-***", str(exc.message or ""))[:300]


@functools.lru_cache(maxsize=256)
def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    # Built once per output model: pydantic would build it anew on every call.
    return model.model_json_schema()


def sdk() -> Any:
    """The openai package, imported on first use: it takes ~0.5 s to import, which `preload_sdk`
    moves off a worker's start (it runs while the worker joins its groups)."""
    import openai

    return openai


def preload_sdk() -> None:
    threading.Thread(target=sdk, name="import-openai", daemon=True).start()
