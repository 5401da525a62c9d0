"""Text normalisation shared by the feeders and record ids."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from typing import Callable

_SPACES = re.compile(r"[ \t]+")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]+")  # every run but a line's indentation
_BLANK_LINE = re.compile(r"^[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")  # indented too: code inside list items


def nfc(text: str) -> str:
    """NFC, except that the characters NFC would replace by another one (canonical singletons:
    Kelvin sign, Ohm sign, Ångström sign, CJK compatibility ideographs, ...) stay as written:
    "'K' (U+212A, Kelvin sign)" must not become a sentence about the letter K."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    singletons = _canonical_singletons()
    if singletons.search(text) is None:
        return unicodedata.normalize("NFC", text)
    pieces, end = [], 0
    for match in singletons.finditer(text):
        pieces += [unicodedata.normalize("NFC", text[end:match.start()]), match.group()]
        end = match.end()
    pieces.append(unicodedata.normalize("NFC", text[end:]))
    return "".join(pieces)


@functools.cache
def _canonical_singletons() -> re.Pattern[str]:
    """Characters whose canonical decomposition is one other character (all below U+3000, in
    U+F900–U+FAFF or in U+2F800–U+2FA1F)."""
    codes = itertools.chain(range(0x3000), range(0xF900, 0xFB00), range(0x2F800, 0x2FA20))
    chars = [chr(code) for code in codes
             if (mapping := unicodedata.decomposition(chr(code))) and not mapping.startswith("<") and " " not in mapping]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def normalise_text(text: str, *, keep_indent: bool = False) -> str:
    """The form a text is sent on in: `nfc` (Unicode as written: "2⁻⁵³", "ſ", "K" (Kelvin) and
    "Ⅰ" stay what they are), unified newlines, single spaces, at most one blank line in a row,
    stripped ends. Idempotent.

    `keep_indent` (documents, Markdown): the spaces and tabs a line starts with are kept, and
    fenced code blocks (``` or ~~~) are kept verbatim, every space and blank line of them.
    Ids and dedup keys do not depend on any of this: they hash `fold_text` of the text."""
    text = nfc(text).replace("\r\n", "\n").replace("\r", "\n")
    if not keep_indent:
        return _collapse(text, keep_indent=False)
    if "```" not in text and "~~~" not in text:
        return _collapse(text, keep_indent=True)
    lines: list[str] = []
    fence = ""  # the opening fence of the code block the line is in
    for line in text.split("\n"):
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
            lines.append(line.rstrip(" \t"))
            continue
        opening = _FENCE.match(line)
        if opening is not None:
            fence = opening.group(1)
        line = _INNER_SPACES.sub(" ", line).rstrip(" \t")
        if line or not lines or lines[-1]:  # at most one blank line in a row, outside code
            lines.append(line)
    return "\n".join(lines).strip("\n").rstrip()


def _collapse(text: str, *, keep_indent: bool) -> str:
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


def fold_text(text: str) -> str:
    """The key form of a text, for ids and exact-duplicate keys only, never for text sent on:
    NFKC (compatibility characters folded: "ﬁ" is "fi", "2⁻⁵³" is "2−53"), every run of spaces
    one space, at most one blank line in a row. The ids of all inputs fed before this form was
    split from `normalise_text` are unchanged (it is what `normalise_text` was)."""
    return _collapse(unicodedata.normalize("NFKC", text.replace("\r\n", "\n").replace("\r", "\n")),
                     keep_indent=False)


def name_key(name: str) -> str:
    """Key under which two names count as the same (case and spacing ignored)."""
    return fold_text(name).casefold()


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
