"""Documents faithful to the page, measured on every page of the test crawls (tests/data/crawl: the
Flask, Requests and Python 3.11 manuals as Debian packages them): per page, the share of the
headings, definition terms, code lines and non-ASCII characters of its main content that reach its
documents, all parts joined (how each share is measured: tests/fidelity.py). The documents are what
the feed makes of the page (`item_from_page`, then the split into parts); the filters judge them
without changing their text (which pages they reject: tests/test_filters.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fidelity import KINDS, Share, measure

from producers.root_records import part_records, to_record
from producers.items import ReadOptions, item_from_page
from streamer.config import FiltersSettings

CRAWL = Path(__file__).parent / "data" / "crawl"
PAGES = sorted(CRAWL.rglob("*.html"))
PYTHON = CRAWL / "python3.11-doc"
GOALS = {"headings": 0.97, "terms": 0.95, "code": 0.98, "characters": 0.99}


def documents_of(page: Path) -> list[str]:
    item = item_from_page(page.read_bytes(), str(page), ReadOptions())
    settings = FiltersSettings()
    return [part.data["text"] for part in part_records(to_record("docs", item), settings.max_chars, False,
                                                         settings.min_chars)]


@pytest.fixture(scope="module")
def documents() -> dict[Path, list[str]]:
    return {page: documents_of(page) for page in PAGES}


def test_every_page_keeps_its_headings_terms_code_and_characters(documents):
    assert len(PAGES) >= 130 and len(list(PYTHON.rglob("*.html"))) >= 30
    assert all(len(list((CRAWL / name).glob("*.html"))) >= 20 for name in ("postgresql-doc-15", "octave-doc"))
    totals = {kind: Share() for kind in KINDS}
    below: list[str] = []
    print(f"\n{'page':48} " + " ".join(f"{kind:>16}" for kind in KINDS))
    for page, texts in documents.items():
        shares = measure(page.read_bytes(), texts)
        row = []
        for kind in KINDS:
            share = shares[kind]
            totals[kind].reached += share.reached
            totals[kind].total += share.total
            row.append(f"{share.reached:>6}/{share.total:<5} {share.value:.2f}" if share.total else f"{'-':>16}")
            if share.value < GOALS[kind]:
                below.append(f"{page.relative_to(CRAWL)} {kind} {share.value:.3f} < {GOALS[kind]}")
        print(f"{str(page.relative_to(CRAWL)):48} " + " ".join(row))
    print(f"{'all pages':48} " + " ".join(f"{totals[k].reached:>6}/{totals[k].total:<5} {totals[k].value:.3f}"
                                          for k in KINDS))
    assert all(totals[kind].total > 100 for kind in KINDS)  # every kind is really measured
    assert not below, below
    assert all(totals[kind].value >= GOALS[kind] for kind in KINDS)


def _text(documents: dict[Path, list[str]], name: str) -> str:
    return "\n".join(documents[PYTHON / name])


def test_unicode_stays_as_written(documents):
    random = _text(documents, "library/random.html")
    assert "multiples of 2\u207b\u2075\u00b3 in the range" in random  # 2⁻⁵³, not 2−53
    assert "multiples of 2\u207b\u00b9\u2070\u2077\u2074 in the range *0.0 \u2264 x < 1.0*" in random
    assert "‘ſ’ (U+017F, Latin small letter long s) and ‘\u212a’ (U+212A, Kelvin sign)" in _text(documents, "library/re.html")
    assert "“Roman Numeral One”, ‘\u2160’, that’s separate from the uppercase letter ‘I’" in _text(
        documents, "howto/unicode.html")


def test_faq_questions_that_are_links_stay_headings_above_their_answers(documents):
    text = _text(documents, "faq/programming.html")
    assert "### Is there a source code level debugger with breakpoints, single-stepping, etc.?\n\nYes.\n\n" in text


def test_doctest_continuation_lines_keep_their_indentation(documents):
    text = _text(documents, "library/json.html")
    assert ">>> def as_complex(dct):\n...     if '__complex__' in dct:\n...         return complex(" in text


def test_signatures_are_code_and_terms_are_whole(documents):
    text = _text(documents, "library/json.html")
    assert "`json.dump(obj, fp, *, skipkeys=False, ensure_ascii=True," in text
    assert "*obj*," not in text
    assert not any(line.strip() in ("-", "*") for texts in documents.values() for t in texts for line in t.splitlines())


def test_inline_code_that_wraps_on_the_page_stays_inline(documents):
    for texts in documents.values():
        for text in texts:
            for line in text.splitlines():
                stripped = line.lstrip()
                assert "```" not in stripped or stripped.startswith(("```", "~~~")), line  # no fence mid-sentence


def test_pages_that_do_not_name_their_main_content_keep_it_too(tmp_path):
    """The Sphinx pages with `role="main"` taken out go the generic route (producers.main_element):
    same goals, measured against the same main content (index pages aside: their link lists are
    navigation there)."""
    verdicts = dict(line.split("\t")[0::2] for line in (CRAWL.parent / "crawl-verdicts.tsv").read_text().splitlines()
                    if line and not line.startswith(("#", "page\t")))
    totals = {kind: Share() for kind in KINDS}
    below: list[str] = []
    for page in PAGES:
        raw = page.read_bytes()
        if b'role="main"' not in raw or verdicts[str(page.relative_to(CRAWL))] != "kept":
            continue
        unmarked = tmp_path / page.relative_to(CRAWL)
        unmarked.parent.mkdir(parents=True, exist_ok=True)
        unmarked.write_bytes(raw.replace(b'role="main"', b""))
        shares = measure(raw, documents_of(unmarked))
        for kind in KINDS:
            totals[kind].reached += shares[kind].reached
            totals[kind].total += shares[kind].total
            if shares[kind].value < GOALS[kind]:
                below.append(f"{page.relative_to(CRAWL)} {kind} {shares[kind].value:.3f} < {GOALS[kind]}")
    print("\nwithout role=main: " + " ".join(f"{k} {totals[k].reached}/{totals[k].total} {totals[k].value:.3f}"
                                             for k in KINDS))
    assert all(totals[kind].total > 100 for kind in KINDS)
    assert not below, below
