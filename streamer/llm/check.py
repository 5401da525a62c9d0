"""`synthstream llm check`: what an endpoint and model can do, found by asking, and the settings
that follow from it.

Each probe is one small request (or a few), in the order that costs least on a slow server:
- the models the endpoint lists (GET /models);
- the context window: from the model list (vLLM's `max_model_len`, `context_length`...) or
  llama.cpp's `/props`; else from the server's own context-length error for a request that cannot
  fit (a huge max_tokens; on llama-cpp-python, which cuts max_tokens silently, a prompt longer than
  any window: it refuses it before evaluating anything);
- whether the system message reaches the model: a code word given only there, which the model is
  asked to repeat (the probe `llm.system_role = "auto"` makes); without it, the same code word in
  the user message tells a dropped system message from a model that repeats nothing;
- latency (a 1-token reply) and generation speed (a 64-token reply);
- whether it works on two requests at once (two short replies asked together, against one alone):
  a server that answers one at a time should get one at a time (`max_in_flight = 1`), so a request's
  timeout measures its own work and not the queue ahead of it;
- the structured-output dialect: the ladder of `llm.structured` from the top, each rung asked for
  a tiny schema through the stages' own client, down to the first that gives valid JSON.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from streamer.config import LLMSettings
from streamer.llm import dialects, roles
from streamer.llm.client import LLMPool, masked
from streamer.llm.results import LLMContextError, LLMError

CHECK_STAGE = "llm-check"  # the stage label of the check's requests in the metrics
SPEED_TOKENS = 64
PARALLEL_TOKENS = 32
SERIAL_RATIO = 1.4  # two requests at once taking this many times one's time: answered one after the other (~2 for a
# server with one slot, measured 1.6-2.0 on a busy machine; ~1 where requests are batched together)
# Longer than any context window a llama-cpp-python server is run with; it refuses such a prompt
# after tokenizing it (a fraction of a second), before evaluating anything.
OVERSIZED_PROMPT_WORDS = 140_000
_WINDOW_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")


class CityFacts(BaseModel):
    """The tiny schema each dialect is tried with."""

    city: str = Field(min_length=1, max_length=80)
    country: str = Field(min_length=1, max_length=80)
    is_capital: bool


CITY_QUESTION = [{"role": "system", "content": "You answer questions about geography."},
                 {"role": "user", "content": "Name the capital city of France and its country."}]
SPEED_PROMPT = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]


@dataclass
class CheckReport:
    """What was found about one endpoint and model (None: not found, the note says why)."""

    base_url: str
    model: str
    models: list[str] | None = None
    models_note: str = ""
    dialect: str | None = None
    dialect_tries: list[tuple[str, str]] = field(default_factory=list)  # (dialect, why it failed)
    context_tokens: int | None = None
    context_note: str = ""
    system_role: str | None = None  # "system" (arrives) or "user" (dropped or refused: merge it)
    system_note: str = ""
    latency_s: float | None = None
    tokens_per_second: float | None = None
    speed_note: str = ""
    serial: bool | None = None  # whether the server answers one request at a time
    parallel_note: str = ""

    @property
    def usable(self) -> bool:
        return self.dialect is not None

    def settings_lines(self) -> list[str]:
        """The keys to set for this endpoint and model, as TOML lines (what is unknown, as comments)."""
        lines = [f'structured = "{self.dialect}"' if self.dialect
                 else "# structured: no dialect gave valid JSON (see above)"]
        lines.append(f"context_tokens = {self.context_tokens}" if self.context_tokens
                     else "# context_tokens: the server did not say (set it to the model's window)")
        lines.append(f'system_role = "{self.system_role}"' if self.system_role
                     else '# system_role: could not tell (leave "auto")')
        if self.serial:
            lines.append("max_in_flight = 1   # it answers one request at a time: the others wait in the client, "
                         "not in its queue (a timeout then measures one request)")
        if self.tokens_per_second:
            lines.append(f"# tokens_per_second = {int(self.tokens_per_second)}   # measured one request alone; "
                         "unset, a run measures it under its own load")
        return lines

    def render(self) -> str:
        out = [f"endpoint {self.base_url}, model {self.model}"]
        listed = ", ".join(self.models) if self.models else "none"
        out.append(f"  models listed: {listed}{f' ({self.models_note})' if self.models_note else ''}")
        tries = [f"{name} not usable ({why})" for name, why in self.dialect_tries]
        works = f"{self.dialect} works" if self.dialect else "none works"
        out.append(f"  structured output: {'; '.join([*tries, works])}")
        out.append(f"  context length: {f'{self.context_tokens} tokens' if self.context_tokens else 'unknown'}"
                   f" ({self.context_note})")
        out.append(f"  system role: {self.system_note}")
        speed = f"{self.tokens_per_second:.1f} tokens/s" if self.tokens_per_second else "tokens/s unknown"
        latency = f"{self.latency_s:.2f} s for a 1-token reply" if self.latency_s is not None else "latency unknown"
        out.append(f"  speed: {latency}; {speed}{f' ({self.speed_note})' if self.speed_note else ''}")
        out.append(f"  requests at once: {self.parallel_note}")
        return "\n".join(out)


def probe_settings(settings: LLMSettings, **overrides: Any) -> LLMSettings:
    """The endpoint's settings for one probe: no cache, few retries, the system message as it is."""
    return settings.model_copy(update={"cache": False, "max_retries": 1, "reasks": 0, "system_role": "system",
                                       "temperature": 0.0, "seed": 0, **overrides})


async def check_endpoint(settings: LLMSettings) -> CheckReport:
    """Every probe against the endpoint and model of `settings`."""
    pool = LLMPool()
    http = pool.endpoint(settings)  # the requests' own base URL, auth, headers and proxy
    report = CheckReport(http.base, settings.model)
    try:
        listing = await _list_models(http, settings, report)
        await _context_window(http, pool, settings, listing, report)
        await _system_role(pool, settings, report)
        await _speed(pool, settings, report)
        await _parallel(pool, settings, report)
        await _dialect(pool, settings, report)
    finally:
        await pool.close()
    return report


def _root(http: Any) -> str:
    """The server's root: the base URL without its /v1 (where llama.cpp serves /props)."""
    return http.base.removesuffix("/v1")


async def _list_models(http: Any, settings: LLMSettings, report: CheckReport) -> list[dict[str, Any]]:
    status, body = await http.get_json(f"{http.base}/models")
    entries = body.get("data") if isinstance(body, dict) else None
    if status != 200 or not isinstance(entries, list):
        report.models_note = f"GET /models answered {status or masked(str(body))[:200]}"
        return []
    entries = [e for e in entries if isinstance(e, dict)]
    report.models = [str(e.get("id")) for e in entries]
    if settings.model not in report.models:
        report.models_note = f"the configured model {settings.model} is not among them"
    return entries


async def _context_window(http: Any, pool: LLMPool, settings: LLMSettings, listing: list[dict[str, Any]],
                          report: CheckReport) -> None:
    for entry in listing:  # vLLM, LM Studio, OpenRouter and others say it with the model
        if entry.get("id") == settings.model:
            for source in (entry, entry.get("meta") or {}):
                for key in _WINDOW_KEYS:
                    if isinstance(source.get(key), int) and source[key] > 0:
                        report.context_tokens, report.context_note = source[key], f"the model list's {key}"
                        return
    status, props = await http.get_json(f"{_root(http)}/props")  # llama.cpp's llama-server
    if status == 200 and isinstance(props, dict):
        for source in (props.get("default_generation_settings") or {}, props):
            if isinstance(source.get("n_ctx"), int) and source["n_ctx"] > 0:
                report.context_tokens, report.context_note = source["n_ctx"], "the server's /props n_ctx"
                return
    # llama-cpp-python (it serves /extras/tokenize/count) cuts a too large max_tokens without a word,
    # but refuses a prompt longer than its window before evaluating it.
    status, counted = await http.get_json(f"{_root(http)}/extras/tokenize/count",
                                       {"input": "hello", "model": settings.model})
    llama_cpp_python = status == 200 and isinstance(counted, dict) and "count" in counted
    if llama_cpp_python:
        messages = [{"role": "user", "content": "hello " * OVERSIZED_PROMPT_WORDS}]
        params: dict[str, Any] = {"max_tokens": 1}
        how = "its error for a prompt longer than any window"
    else:
        messages = [{"role": "user", "content": "Reply with the word OK."}]
        params = {"max_tokens": 10_000_000, "stop": ["\n"]}
        how = "its error for a max_tokens no window holds"
    client = pool.client(probe_settings(settings), CHECK_STAGE)
    try:
        await client.once(messages, **params)
    except LLMContextError as exc:
        if exc.limit:
            report.context_tokens, report.context_note = exc.limit, f"the server's words: {how}"
        else:
            report.context_note = f"the server's context-length error names no window: {str(exc)[:160]}"
        return
    except LLMError as exc:
        report.context_note = f"the server did not say ({str(exc)[:160]})"
        return
    report.context_note = "the server did not say (it accepted the request)"


async def _system_role(pool: LLMPool, settings: LLMSettings, report: CheckReport) -> None:
    client = pool.client(probe_settings(settings, max_tokens=roles.PROBE_TOKENS), CHECK_STAGE)
    try:
        arrived = roles.arrived((await client.once(roles.PROBE)).content)
    except LLMError as exc:
        if roles.refuses_system(str(exc)):
            report.system_role = "user"
            report.system_note = f"refused by the server ({str(exc)[:160]}): merge it into the user message"
        else:
            report.system_note = f"could not tell: {str(exc)[:160]}"
        return
    if arrived:
        report.system_role, report.system_note = "system", "arrives (the code word given there came back)"
        return
    try:  # the same code word in the user message: does this model repeat one at all?
        control = roles.arrived((await client.once(roles.merged(roles.PROBE))).content)
    except LLMError as exc:
        report.system_note = f"could not tell: {str(exc)[:160]}"
        return
    if control:
        report.system_role = "user"
        report.system_note = ("dropped by the chat template (the code word came back from the user message only): "
                              "merge it into the user message")
    else:
        report.system_note = "could not tell (the model repeated the code word from neither message)"


async def _speed(pool: LLMPool, settings: LLMSettings, report: CheckReport) -> None:
    client = pool.client(probe_settings(settings), CHECK_STAGE)
    try:
        started = time.monotonic()
        await client.once(SPEED_PROMPT, max_tokens=1)
        report.latency_s = time.monotonic() - started
        started = time.monotonic()
        long = await client.once(SPEED_PROMPT, max_tokens=SPEED_TOKENS)
        generating = time.monotonic() - started - report.latency_s
    except LLMError as exc:
        report.speed_note = str(exc)[:160]
        return
    tokens = long.completion_tokens - 1
    if tokens < 8 or generating < 0.01:
        report.speed_note = (f"{long.completion_tokens} tokens in {generating + report.latency_s:.2f} s: too few "
                             "tokens or too fast to time")
        return
    report.tokens_per_second = tokens / generating
    report.speed_note = f"{long.completion_tokens} tokens in {generating + report.latency_s:.2f} s, one request alone"


async def _parallel(pool: LLMPool, settings: LLMSettings, report: CheckReport) -> None:
    """Whether the server works on two requests at once: two short replies asked together take about
    as long as one where it does, twice as long where it answers one after the other (llama-cpp-python)."""
    client = pool.client(probe_settings(settings, max_tokens=PARALLEL_TOKENS), CHECK_STAGE)
    try:
        # Once untimed first: a server that keeps the last prompt's state (llama.cpp) then starts
        # the timed one alone and the two together from the same warm prompt, and the load of the
        # machine settles on the same figure; the faster of two alone counts.
        await client.once(SPEED_PROMPT, seed=3)
        one = float("inf")
        for seed in (4, 5):
            started = time.monotonic()
            await client.once(SPEED_PROMPT, seed=seed)
            one = min(one, time.monotonic() - started)
        started = time.monotonic()
        await asyncio.gather(*(client.once(SPEED_PROMPT, seed=seed) for seed in (1, 2)))
        two = time.monotonic() - started
    except LLMError as exc:
        report.parallel_note = f"could not tell: {str(exc)[:160]}"
        return
    if one < 0.2:
        report.parallel_note = f"could not tell (a short reply takes {one:.2f} s)"
        return
    report.serial = two / one >= SERIAL_RATIO
    report.parallel_note = (f"two took {two / one:.1f}x as long as one: "
                            f"{'answered one after the other' if report.serial else 'answered together'}")


async def _dialect(pool: LLMPool, settings: LLMSettings, report: CheckReport) -> None:
    """Down the ladder from the top, each rung as a fixed `llm.structured`, to the first that works."""
    for dialect in dialects.LADDER:
        client = pool.client(probe_settings(settings, structured=dialect, reasks=1, max_tokens=200), CHECK_STAGE)
        try:
            await client.structured(CITY_QUESTION, CityFacts)
        except LLMError as exc:
            why = str(exc).removeprefix(f"structured output ({dialect}) not usable with this server: ")
            report.dialect_tries.append((dialect, " ".join(why.split())[:200]))
            continue
        report.dialect = dialect
        return


def settings_table(report: CheckReport, tables: list[str]) -> str:
    """The settings for `report`'s endpoint under each of `tables` (`llm`, `stages.NAME.llm`)."""
    return "\n\n".join("\n".join([f"[{table}]", *report.settings_lines()]) for table in tables)

