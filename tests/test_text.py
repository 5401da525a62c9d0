"""Text normalisation: the document keeps Unicode as written (NFC) and its code verbatim; ids and
dedup keys fold (NFKC, spacing) and are what they were before the two forms were split."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from producers.extract import extract
from streamer.records import content_id, stable_hash
from streamer.text import fold_text, normalise_text

CRAWL = Path(__file__).parent / "data" / "crawl"


def normalise_text_before_the_split(text: str, *, keep_indent: bool = False) -> str:
    """streamer.text.normalise_text as it was when ids were hashes of its NFKC form (frozen copy:
    the reference the ids of inputs fed before must still match)."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\t" in text or "  " in text:
        if keep_indent:
            text = re.sub(r"^[ \t]+$", "", re.sub(r"(?<=\S)[ \t]+", " ", text), flags=re.MULTILINE)
        else:
            text = re.sub(r"[ \t]+", " ", text)
    text = text.replace(" \n", "\n")
    if "\n\n\n" in text:
        text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip() if keep_indent else text.strip()


TRICKY = [
    "multiples of 2⁻⁵³ and ½ of ﬁve",
    "'ſ' (U+017F) and 'K' (U+212A, Kelvin sign); Roman Numeral One, 'Ⅰ', separate from 'I'",
    "a\u00a0b\u2003c\u3000d \t e\r\n\r\n\r\n\r\nf  \n \n\t\n g",
    "text\n```python\n>>> def f():\n...     return  1\n\n\n\n...\n```\nafter   it\n\n\n\nend  ",
    "~~~\n  indented   code\t\there\n~~~~\n\n\n\nprose  after\u00a0\n",
    "e\u0301t\u00e9 \ufb03 \u2028 x\u0085y",
    "```\nunclosed   fence\n\n\n\n  a  b",
]


def _old_id(raw: str) -> str:
    return stable_hash(normalise_text_before_the_split(normalise_text_before_the_split(raw, keep_indent=True)))


@pytest.mark.parametrize("raw", TRICKY)
def test_ids_of_texts_are_what_they_were_before_the_split(raw):
    assert content_id(normalise_text(raw, keep_indent=True)) == _old_id(raw)
    assert content_id(raw) == _old_id(raw)


def test_ids_of_every_crawl_page_are_what_they_were_before_the_split():
    pages = sorted(CRAWL.rglob("*.html"))
    assert len(pages) > 80
    for page in pages:
        raw = extract(page.read_bytes()).text
        assert content_id(normalise_text(raw, keep_indent=True)) == _old_id(raw), page


def test_documents_keep_unicode_as_written_and_code_verbatim():
    text = normalise_text(TRICKY[1] + "\n\n" + TRICKY[3], keep_indent=True)
    assert "'ſ' (U+017F) and 'K' (U+212A" in text and "'Ⅰ', separate from 'I'" in text
    assert "```python\n>>> def f():\n...     return  1\n\n\n\n...\n```" in text  # spaces and blank lines kept
    assert "\nafter it\n\nend" in text  # prose around it is still collapsed
    assert normalise_text("e\u0301", keep_indent=True) == "\u00e9"  # NFC
    assert normalise_text(text, keep_indent=True) == text  # idempotent


def test_the_folded_key_is_nfkc_and_ignores_spacing():
    assert fold_text("2⁻⁵³  ﬁ\u00a0\u212a") == "2\u221253 fi K"
    assert fold_text("ﬁne\u00a0print　wide") == "fine print wide"
    assert fold_text("a  b\n\n\n\nc") == fold_text("a b\n\nc")
