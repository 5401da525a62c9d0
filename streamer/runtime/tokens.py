"""Counting and cutting text by tokens (not characters), for prompt budgets.

Uses the fast tokenizer that ships with the offline embedder; its WordPiece counts track
LLM BPE counts closely enough for budgeting, and it needs no download.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer

from streamer.runtime.embedding import DEFAULT_MODEL, model_location


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    from pathlib import Path

    location = Path(model_location(DEFAULT_MODEL))
    tokenizer = Tokenizer.from_file(str(location / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@functools.lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Cached: the same prompts and example seeds are counted for every document."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def truncate_tokens(text: str, max_tokens: int, marker: str = " […]") -> str:
    """The longest prefix of `text` with at most `max_tokens` tokens, cut at a token boundary."""
    if max_tokens <= 0:
        return ""
    if len(text) <= max_tokens:  # every token covers at least one character: it fits, no need to count
        return text
    encoding = _tokenizer().encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    end = encoding.offsets[max_tokens - 1][1]
    return text[:end] + marker
