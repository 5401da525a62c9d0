"""Context limits as servers state them, and how much of a prompt then fits.

Servers refuse a request whose prompt and completion do not fit the model's context window, each in
its own words; whatever numbers they give are read here:

- OpenAI, vLLM, llama-cpp-python: "This model's maximum context length is 4096 tokens. However, you
  requested 5000 tokens (4000 in the messages, 1000 in the completion)" (or "your messages
  resulted in 5000 tokens", or newer vLLM's "your request has 4000 input tokens");
- llama.cpp's llama-server: "request (5000 tokens) exceeds the available context size (4096
  tokens)" with `n_prompt_tokens` and `n_ctx` in the error object;
- llama-cpp-python (direct): "Requested tokens (5000) exceed context window of 4096";
- text-generation-inference: "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000
  `inputs` tokens and 1000 `max_new_tokens`".

The runtime (streamer.runtime.stage.RecordLLM) shrinks what a stage sends by the share `fit` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAMES_CONTEXT = re.compile(r"context[ _](?:length|window|size)|exceed_context_size|maximum context|"
                            r"`inputs` tokens \+ `max_new_tokens`|prompt is too long", re.IGNORECASE)
_LIMIT = (re.compile(r"maximum context length is (\d+)", re.I), re.compile(r"context window of (\d+)", re.I),
          re.compile(r"available context size \((\d+)", re.I), re.compile(r"must be <= (\d+)", re.I),
          re.compile(r"context (?:length|size|window)[^0-9.]{0,20}(\d{3,})", re.I))
_PROMPT = (re.compile(r"(\d+) in the messages", re.I), re.compile(r"messages resulted in (\d+) tokens", re.I),
           re.compile(r"request has (\d+) input tokens", re.I), re.compile(r"Given: (\d+) `inputs` tokens", re.I),
           re.compile(r"prompt (?:is|has) (\d+) tokens", re.I))
_REQUESTED = (re.compile(r"requested (\d+) tokens", re.I), re.compile(r"Requested tokens \((\d+)\)", re.I),
              re.compile(r"request \((\d+) tokens\)", re.I))

MAX_SHRINKS = 3  # overflows of one call answered by cutting; the next one is a dead letter
UNKNOWN_LIMIT_SHARE = 0.5  # each overflow halves the prompt when no limit is known


@dataclass(frozen=True)
class Overflow:
    """What a context-length error says: the window, and the prompt's size, when it says them."""

    limit: int | None
    prompt_tokens: int | None


def overflow_in(message: str, body: Any, max_tokens: int | None) -> Overflow | None:
    """The overflow a server's error describes, or None if the error is about something else."""
    fields = body if isinstance(body, dict) else {}
    if not _NAMES_CONTEXT.search(message) and "n_ctx" not in fields:
        return None
    limit = _int(fields.get("n_ctx")) or _first(_LIMIT, message)
    prompt = _int(fields.get("n_prompt_tokens")) or _first(_PROMPT, message)
    if prompt is None and (requested := _first(_REQUESTED, message)) is not None:
        prompt = max(1, requested - (max_tokens or 0))
    return Overflow(limit, prompt)


@dataclass(frozen=True)
class Fit:
    """How to ask again: the share of the prompt to keep, and a smaller max_tokens if that helps."""

    share: float
    max_tokens: int | None  # None: keep it
    limit: int | None


def fit(overflow: Overflow, prompt_chars: int, max_tokens: int, configured_limit: int | None) -> Fit:
    """What fits the window: max_tokens at most half of it, the prompt the rest (less a margin)."""
    limit = overflow.limit or configured_limit
    if not limit:
        return Fit(UNKNOWN_LIMIT_SHARE, None, None)
    new_max = limit // 2 if max_tokens > limit // 2 else None
    completion = new_max or max_tokens
    room = limit - completion - max(16, limit // 32)
    prompt = overflow.prompt_tokens or max(1, prompt_chars // 4)
    if new_max is not None and overflow.prompt_tokens is not None and prompt <= room:
        return Fit(1.0, new_max, limit)  # a smaller completion budget is enough
    return Fit(max(0.05, min(0.9, room / prompt)), new_max, limit)


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        if (match := pattern.search(text)) is not None:
            return int(match.group(1))
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# Delimited blocks (streamer.runtime.stage.delimit writes them) are what the runtime may cut.
BLOCK = re.compile(r"<([A-Za-z][\w-]*)>\n(.*?)\n</\1>", re.DOTALL)
MIN_BLOCK_CHARS = 200  # a block is never cut shorter than this
CUT_MARK = " […]"


def cut_blocks(messages: list[dict[str, str]], share: float) -> tuple[list[dict[str, str]], dict[str, Any]] | None:
    """`messages` with their longest delimited blocks (documents, examples) cut so that the whole
    is about `share` of its size, and what was cut; None when nothing can be cut."""
    total = sum(len(m.get("content") or "") for m in messages)
    excess = total - int(total * share)
    blocks = sorted(((len(match.group(2)), i, match.start(2), match.end(2), match.group(1))
                     for i, m in enumerate(messages) if m.get("role") == "user"
                     for match in BLOCK.finditer(m.get("content") or "")), reverse=True)
    cuts: dict[int, list[tuple[int, int, int]]] = {}
    described: list[dict[str, Any]] = []
    for length, i, start, end, tag in blocks:
        if excess <= 0:
            break
        keep = max(MIN_BLOCK_CHARS, length - excess)
        if keep >= length:
            continue
        excess -= length - keep
        cuts.setdefault(i, []).append((start, end, keep))
        described.append({"block": tag, "chars": length, "kept": keep})
    if not described:
        return None
    out = [dict(m) for m in messages]
    for i, spans in cuts.items():
        text = out[i]["content"]
        for start, end, keep in sorted(spans, reverse=True):  # from the end: earlier offsets stay valid
            inner = text[start:end][:keep]
            inner = (inner.rsplit(" ", 1)[0] if " " in inner[keep // 2:] else inner) + CUT_MARK
            text = text[:start] + inner + text[end:]
        out[i]["content"] = text
    return out, {"blocks": described}
