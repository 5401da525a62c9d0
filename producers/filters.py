"""Document filters the feed applies before any LLM call (long documents are cut by producers.parts).

Every rule is a small pure function of the document's `TextStats` and a threshold returning
`(passed, measured_value)`; `DocumentFilters.check` runs them in a fixed order (cheap ones first,
language detection last) and returns the first failing `Verdict`, or None. The quality rules follow
Gopher (Rae et al. 2021) and FineWeb (datatrove's GopherQualityFilter / FineWebQualityFilter), but
are measured on the document's *prose*: the feed's extractor writes Markdown, so fenced code blocks
are left out of the line and word rules, `#` heading markers are not counted as symbols, and
hard-wrapped lines are joined into their paragraph before any line rule. Index and navigation pages
are recognised by their structure (`max_navigation_chars`), not by prose rules.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

from streamer.config import ConfigError, FiltersSettings

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
HEADING_MARKER = re.compile(r"^#{1,6}\s+")
LIST_ITEM = re.compile(r"^(?:[-*+•‣–]|\d{1,3}[.)])\s+")
# A line ends a sentence with one of these, or with a closing quote (FineWeb counts quotes); a
# closing bracket after a sentence end ("(see below.)") still ends one, but a bracket alone does
# not: "abs() (in module operator)" is an index entry, not a sentence.
SENTENCE_ENDS = (".", "!", "?", "…", "。", "！", "？")
CLOSING_QUOTES = ('"', "'", "”", "’", "»")
CLOSING_BRACKETS = ")]}"
BULLETS = ("- ", "* ", "+ ", "• ", "‣ ", "– ")
NAVIGATION_ENTRY_WORDS = 10  # a list item or table row this short, ending no sentence, is a link-list entry
LANGUAGE_SAMPLE_CHARS = 2000  # detecting on the start of the prose is as good and much cheaper


def _fenced(line: str) -> bool:
    return FENCE.match(line) is not None


def ends_sentence(line: str) -> bool:
    return line.endswith(CLOSING_QUOTES) or line.rstrip(CLOSING_BRACKETS).endswith(SENTENCE_ENDS)


def _entry(line: str) -> bool:
    """A list item or table row (the kinds of line navigation is made of)."""
    return line.startswith("|") or LIST_ITEM.match(line) is not None


class TextStats:
    """What the rules measure, computed once per document (lazily: a rule that fails early
    spares the rest)."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        """Tokens with a letter or digit: Markdown marks (`#`, `|`, `-`) are no words."""
        return [token for token in self.text.split() if any(c.isalnum() for c in token)]

    @cached_property
    def prose_lines(self) -> list[str]:
        """The prose as FineWeb measures it, by lines of meaning: outside fenced code blocks,
        heading markers removed, and hard-wrapped lines joined into their paragraph (a line is
        joined to the one before when that one ends no sentence and is no heading or table row,
        and it starts no list item, heading, table row or quote)."""
        lines: list[str] = []
        in_code = joinable = False
        for line in self.text.splitlines():
            if _fenced(line):
                in_code, joinable = not in_code, False
                continue
            stripped = line.strip()
            if in_code or not stripped:
                joinable = False
                continue
            heading = HEADING_MARKER.match(stripped) is not None
            starts_block = heading or _entry(stripped) or stripped.startswith(">")
            if joinable and not starts_block:
                lines[-1] += " " + stripped
            else:
                lines.append(HEADING_MARKER.sub("", stripped))
            joinable = not heading and not stripped.startswith("|") and not ends_sentence(lines[-1])
        return lines

    @cached_property
    def prose_tokens(self) -> list[str]:
        return [token for line in self.prose_lines for token in line.split()]

    @cached_property
    def prose_words(self) -> list[str]:
        return [token for token in self.prose_tokens if any(c.isalnum() for c in token)]

    @cached_property
    def prose(self) -> str:
        return "\n".join(self.prose_lines)


# --- the rules: (stats, threshold) -> (passed, measured value) ---------------------------------------


def _ratio(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def min_chars(stats: TextStats, limit: float) -> tuple[bool, float]:
    return len(stats.text) >= limit, len(stats.text)


def min_words(stats: TextStats, limit: float) -> tuple[bool, float]:
    return len(stats.words) >= limit, len(stats.words)


def max_symbol_word_ratio(stats: TextStats, limit: float) -> tuple[bool, float]:
    """`#` and ellipses per prose word (Gopher: 0.1): hashtag lists, teasers cut with '...'."""
    symbols = sum(stats.prose.count(s) for s in ("#", "...", "…"))
    value = _ratio(symbols, len(stats.prose_tokens))
    return value <= limit, value


def min_terminal_punctuation_lines(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose lines (paragraphs, hard wraps joined) ending a sentence (FineWeb: 0.12):
    menus and link lists end none. A closing bracket alone ends none. Table rows are not sentences
    and count neither way (a reference page's data table of a hundred rows is not a menu; link
    tables are max_navigation_chars' to judge)."""
    lines = [line for line in stats.prose_lines if not line.startswith("|")]
    value = _ratio(sum(1 for line in lines if ends_sentence(line)), len(lines))
    return value >= limit, value


def max_duplicate_lines(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose characters in lines (paragraphs) that repeat an earlier one (Gopher's
    duplicate-line character fraction): boilerplate repeated across a page. By characters, not
    lines, so that a short sentence repeated under every entry of a reference page (a field's
    description) weighs what it is, not one line in three."""
    seen: set[str] = set()
    repeated = 0
    for line in stats.prose_lines:
        if line in seen:
            repeated += len(line)
        seen.add(line)
    value = _ratio(repeated, sum(len(line) for line in stats.prose_lines))
    return value <= limit, value


def max_navigation_chars(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose characters in link-list entries: list items and table rows of at most
    NAVIGATION_ENTRY_WORDS words that end no sentence (index, module-index, table-of-contents
    and link-list pages, recognised by their structure rather than by prose rules)."""
    entries = 0
    for line in stats.prose_lines:
        if _entry(line) and not ends_sentence(line.rstrip("| ")):
            words = sum(1 for token in line.split() if any(c.isalnum() for c in token))
            entries += len(line) if words <= NAVIGATION_ENTRY_WORDS else 0
    value = _ratio(entries, sum(len(line) for line in stats.prose_lines))
    return value <= limit, value


def max_top_2gram_chars(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose characters in the most frequent word pair (Gopher: 0.2): boilerplate loops."""
    tokens = stats.prose_tokens
    pairs = Counter(pairwise(tokens))
    if not pairs:
        return True, 0.0
    (first, second), count = pairs.most_common(1)[0]
    value = _ratio((len(first) + len(second)) * count, sum(len(t) for t in tokens))
    return value <= limit, value


def max_bullet_lines(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose lines that are list items (Gopher: 0.9): navigation-only pages."""
    value = _ratio(sum(1 for line in stats.prose_lines if line.startswith(BULLETS)), len(stats.prose_lines))
    return value <= limit, value


def min_alpha_words(stats: TextStats, limit: float) -> tuple[bool, float]:
    """Share of prose words with a letter (Gopher: 0.8): tables of numbers, listings of codes. Words,
    as in Gopher, not symbols: `+` and `=` of a formula or `|` of a table count neither way."""
    words = stats.prose_words
    value = _ratio(sum(1 for w in words if any(c.isalpha() for c in w)), len(words))
    return value >= limit, value


def mean_word_length(stats: TextStats, bounds: tuple[float, float]) -> tuple[bool, float]:
    """Mean length of the words (Gopher: 3 to 10): gibberish, URL dumps, letter-index pages."""
    value = round(sum(len(w) for w in stats.words) / len(stats.words), 2) if stats.words else 0.0
    return bounds[0] <= value <= bounds[1], value


# --- running them -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Why a document was rejected: the filter, what was measured and the threshold it missed."""

    filter: str
    value: float | str
    threshold: float | str | list[Any]

    @property
    def reason(self) -> str:
        return f"{self.filter}: {self.value} (threshold {self.threshold})"


Rule = Callable[[TextStats, Any], tuple[bool, float]]


class LanguageDetector:
    """lingua over all its languages (detecting among the kept ones only would call a French page
    English when only English is kept), built once, on first use, in low-accuracy mode."""

    def __init__(self) -> None:
        self._detector: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        from lingua import (
            LanguageDetectorBuilder,  # heavy: only when languages are filtered
        )

        with self._lock:
            if self._detector is None:
                self._detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()
        return self._detector

    def detect(self, text: str) -> str:
        """ISO 639-1 code of the text's language, or "unknown"."""
        language = self._build().detect_language_of(text[:LANGUAGE_SAMPLE_CHARS])
        return language.iso_code_639_1.name.lower() if language is not None else "unknown"


def known_language_codes() -> set[str]:
    from lingua import Language

    return {language.iso_code_639_1.name.lower() for language in Language.all()}


class DocumentFilters:
    """The configured rules, in the order they are tried."""

    def __init__(self, settings: FiltersSettings) -> None:
        self.settings = settings
        s = settings
        self.rules: list[tuple[str, Rule, Any]] = [
            ("min_chars", min_chars, s.min_chars),
            ("min_words", min_words, s.min_words),
            ("max_navigation_chars", max_navigation_chars, s.max_navigation_chars),
            ("max_symbol_word_ratio", max_symbol_word_ratio, s.max_symbol_word_ratio),
            ("min_terminal_punctuation_lines", min_terminal_punctuation_lines, s.min_terminal_punctuation_lines),
            ("max_duplicate_lines", max_duplicate_lines, s.max_duplicate_lines),
            ("max_top_2gram_chars", max_top_2gram_chars, s.max_top_2gram_chars),
            ("max_bullet_lines", max_bullet_lines, s.max_bullet_lines),
            ("min_alpha_words", min_alpha_words, s.min_alpha_words),
            ("mean_word_length", mean_word_length, (s.min_mean_word_length, s.max_mean_word_length)),
        ]
        self.languages = set(s.languages)
        if self.languages and (unknown := self.languages - known_language_codes()):
            raise ConfigError(f"feed.filters.languages: unknown ISO 639-1 codes {sorted(unknown)}")
        self.detector = LanguageDetector()

    def check(self, text: str, meta: dict[str, Any]) -> Verdict | None:
        """The first rule the text fails, or None; records the detected language in `meta`."""
        if not self.settings.enabled:
            return None
        stats = TextStats(text)
        for name, rule, threshold in self.rules:
            passed, value = rule(stats, threshold)
            if not passed:
                return Verdict(name, value, list(threshold) if isinstance(threshold, tuple) else threshold)
        if self.languages:
            meta["language"] = language = self.detector.detect(stats.prose or text)
            if language not in self.languages:
                return Verdict("language", language, sorted(self.languages))
        return None
