"""Long documents cut by sections (producers.parts): at headings, then paragraphs, never inside
code or tables; each part after the first names the headings it sits under; no part is tiny."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from producers.root_records import part_records, to_record
from producers.items import FeedItem, ReadOptions, item_from_page
from producers.parts import PATH_SEPARATOR, blocks_of, split_sections

CRAWL = Path(__file__).parent / "data" / "crawl"
LONG_PAGES = ["python3.11-doc/faq/programming.html", "python3.11-doc/library/re.html",
              "python-requests-doc/api.html", "python-flask-doc/config.html", "python3.11-doc/library/json.html"]
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def page_text(name: str) -> tuple[str, str]:
    item = item_from_page((CRAWL / name).read_bytes(), name, ReadOptions())
    return item.text, item.meta["title"]


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _headings(text: str) -> list[str]:
    return [block.title for block in blocks_of(text) if block.kind == "heading"]


@pytest.mark.parametrize("name", LONG_PAGES)
def test_real_pages_are_cut_at_sections_with_their_heading_path_and_nothing_lost(name):
    text, title = page_text(name)
    limit, min_chars = 6000, 200
    parts = split_sections(text, limit, title=title, min_chars=min_chars)
    assert len(parts) > 2
    headings = _headings(text)
    bodies = [parts[0]]
    for part in parts[1:]:
        path, _, body = part.partition("\n\n")
        names = path.split(PATH_SEPARATOR)
        assert names[0] == title and all(n in headings for n in names), path  # page title › section › ...
        bodies.append(body)
    for body in bodies:
        assert len(body) >= min_chars
        assert len(FENCE.findall(body)) % 2 == 0, body[:300]  # no part starts or ends inside a code block
        assert not body.rstrip().split("\n")[-1].startswith("#")  # no part ends on a heading
    assert all(len(part) <= limit + min_chars for part in parts)
    if "faq" in name:  # short sections: every part opens with a heading
        assert all(body.startswith("#") for body in bodies[1:])
    assert _squeezed("".join(bodies)) == _squeezed(text)  # every character, in order (no code was re-fenced)


def test_a_code_block_or_table_longer_than_a_part_is_cut_between_lines_and_stays_valid():
    code = "```python\n" + "\n".join(f"value_{i} = {i}  # line {i}" for i in range(200)) + "\n```"
    table = "| key | value |\n| --- | --- |\n" + "\n".join(f"| k{i} | v{i} |" for i in range(200))
    text = "# Title\n\nIntro paragraph that says what follows.\n\n" + code + "\n\n## Table\n\n" + table
    parts = split_sections(text, 1000)
    assert all(len(p) <= 1000 for p in parts)
    code_parts = [p for p in parts if "value_" in p]
    assert len(code_parts) > 2
    for part in code_parts:
        body = part[part.index("```python"):]
        assert body.startswith("```python\n") and body.rstrip().endswith("```")
    table_parts = [p for p in parts if "| k" in p]
    assert len(table_parts) > 2 and all("| key | value |\n| --- | --- |\n| k" in p for p in table_parts)
    assert all(p.startswith("Title › Table\n\n") for p in table_parts[1:])


def test_a_tiny_tail_is_merged_into_its_neighbour():
    text = "# T\n\n" + "\n\n".join(f"Paragraph {i} " + "words " * 150 for i in range(4)) + "\n\n## End\n\nShort."
    parts = split_sections(text, 1000, min_chars=200)
    assert parts[-1].endswith("## End\n\nShort.") and len(parts[-1]) > 200


def test_parts_carry_page_id_part_number_and_count():
    text, title = page_text("python3.11-doc/faq/programming.html")
    document = to_record("docs", FeedItem(text, "programming.html", {"title": title}, extraction="main"))
    parts = part_records(document, 6000, truncate=False, min_chars=200)
    assert len(parts) > 2
    assert [p.data["meta"]["part"] for p in parts] == list(range(1, len(parts) + 1))
    assert {p.data["meta"]["parts"] for p in parts} == {len(parts)}
    assert {p.data["meta"]["document_id"] for p in parts} == {document.id}


def test_a_part_names_its_page_part_number_and_count_in_the_sample_chain():
    from consumers.situation import document_reference
    from streamer.records import Document
    from streamer.storage.samples import _document

    text, title = page_text("python3.11-doc/faq/programming.html")
    document = to_record("docs", FeedItem(text, "programming.html", {"title": title}, extraction="main"))
    second = part_records(document, 6000, truncate=False, min_chars=200)[1]
    reference = document_reference(Document.model_validate(second.data)).model_dump()
    assert (reference["page_id"], reference["part"], reference["parts"]) == (document.id, 2, second.data["meta"]["parts"])
    exported = _document({"document_id": second.id}, {"document": reference})
    assert exported == {"id": second.id, "title": title, "url": None, "source": "programming.html",
                        "page_id": document.id, "part": 2, "parts": second.data["meta"]["parts"]}
    whole = document_reference(Document(text="x", source="a.jsonl:1", meta={})).model_dump()
    assert (whole["page_id"], whole["part"], whole["parts"]) == (None, None, None)
