"""Text normalisation shared by the feeders and record ids."""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

_SPACES = re.compile(r"[ \t]+")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]+")  # every run but a line's indentation
_BLANK_LINE = re.compile(r"^[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise_text(text: str, *, keep_indent: bool = False) -> str:
    """NFKC, unified newlines, single spaces, at most one blank line in a row, stripped ends.

    Idempotent; used both as the text sent on and for ids, so exact duplicates collapse.
    `keep_indent` keeps the spaces and tabs a line starts with (code blocks, nested lists); the
    default form of such a text is the same as of the original, so ids do not depend on it."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # The `in` checks are fast scans that spare most texts the (much slower) regex passes.
    if "\t" in text or "  " in text:
        if keep_indent:
            text = _BLANK_LINE.sub("", _INNER_SPACES.sub(" ", text))
        else:
            text = _SPACES.sub(" ", text)
    text = text.replace(" \n", "\n")  # after collapsing, a trailing run is a single space
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n").rstrip() if keep_indent else text.strip()


def name_key(name: str) -> str:
    """Key under which two names count as the same (case and spacing ignored)."""
    return normalise_text(name).casefold()


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REAL_WORD = re.compile(r"[^\W\d_]{2,}")


def real_words(text: str) -> int:
    """Words of two letters or more: digits, punctuation and stray letters are no answer."""
    return len(_REAL_WORD.findall(text))


def at_least_words(minimum: int) -> Callable[[str], str]:
    """A pydantic AfterValidator: text with fewer real words than `minimum` fails validation."""

    def check(text: str) -> str:
        if (words := real_words(text)) < minimum:
            raise ValueError(f"needs at least {minimum} real words of text, has {words}")
        return text

    return check
