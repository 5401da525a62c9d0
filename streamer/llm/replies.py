"""Replies as real models write them: reasoning text before the answer, JSON in code fences or
with prose around it, a second object after the first, raw control characters inside strings,
smart quotes; and the checks every reply passes before it may become data.

Extraction costs nothing on a clean reply (one `json.loads`); the tolerant path runs only when it
fails. A cut-off object is not repaired (libraries such as json-repair would close it and hide a
truncation): it fails here and is asked again.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamer.text import real_words

_THINK = re.compile(r"^\s*<think>.*?(?:</think>|$)\s*", re.DOTALL)
_FENCED = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TOLERANT = json.JSONDecoder(strict=False)  # accepts raw control characters inside strings
_SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"'})


def without_reasoning(content: str) -> tuple[str, str]:
    """(the answer, the reasoning before it): `<think>…</think>` as reasoning models write it."""
    if "<think>" not in content[:100]:
        return content, ""
    match = _THINK.match(content)
    if match is None:
        return content, ""
    return content[match.end():], match.group(0)


def extract_json(content: str) -> Any:
    """The first JSON object in a reply; ValueError saying why there is none."""
    try:
        return json.loads(content)
    except ValueError as exc:
        first_error = exc
    candidates = [m.group(1) for m in _FENCED.finditer(content)] + [content]
    for text in candidates:
        for attempt in (text, text.translate(_SMART_QUOTES)):
            start = attempt.find("{")
            if start == -1:
                continue
            try:
                return _TOLERANT.raw_decode(attempt, start)[0]  # whatever follows the object is ignored
            except ValueError:
                continue
    if "{" not in content:
        raise ValueError("the reply holds no JSON object")
    raise first_error


def content_problem(content: str, messages: list[dict[str, Any]], min_words: int = 0) -> str | None:
    """Why a reply can never be a sample (None if it may): empty, only the prompt repeated, or
    fewer real words than `min_words`."""
    text = " ".join(content.split())
    if not text:
        return "the reply was empty"
    for message in messages:
        if message.get("role") != "user" or len(text) < 0.8 * len(said := str(message.get("content") or "")):
            continue
        if text.lower() in " ".join(said.split()).lower():
            return "the reply only repeats the prompt"
    if min_words and (words := real_words(text)) < min_words:
        return f"the reply has {words} real words, fewer than {min_words}"
    return None
