"""The prompt's words, which every simulated answer is made of, and the token count of text."""

from __future__ import annotations

import math
import random
import re
from typing import Any

CHARS_PER_TOKEN = 4
# Used when a request has no words at all, so content is never empty.
FALLBACK_WORDS = (
    "synthetic data flows through the stream and every record becomes a useful example "
    "with a clear question and a grounded answer"
).split()
_WORD = re.compile(r"\w[\w'-]*")


def count_tokens(chars: int) -> int:
    """Tokens of a text `chars` characters long, the way the simulator counts them."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def message_text(message: dict[str, Any]) -> str:
    """Text of a message whose content is a string or a list of parts (vision-style)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_words(messages: list[dict[str, Any]]) -> list[str]:
    """Words of the user messages, else of the system messages, else the built-in list."""
    for role in ("user", "system"):
        text = " ".join(message_text(m) for m in messages if m.get("role") == role)
        if words := _WORD.findall(text):
            return words
    return list(FALLBACK_WORDS)


def word_run(words: list[str], rng: random.Random, n: int) -> str:
    """`n` contiguous words of the prompt (wrapping around), so output reads like a quote."""
    start = rng.randrange(len(words))
    return " ".join(words[(start + i) % len(words)] for i in range(n))


def sentence(words: list[str], rng: random.Random) -> str:
    text = word_run(words, rng, rng.randint(4, 12))
    return text[:1].upper() + text[1:] + "."


def paragraph(words: list[str], rng: random.Random) -> str:
    # Kept short (at most ~36 words) so modest max_tokens budgets are not hit by plain replies.
    return " ".join(sentence(words, rng) for _ in range(rng.randint(1, 3)))
