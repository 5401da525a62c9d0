"""Real crawls in, clean documents out: main-content extraction on real documentation pages
(tests/data/crawl, see its README), web archives (WARC, WET, ARC; plain, gzip, on stdin; cut
short), and `feed docs crawl.warc.gz` through the CLI onto a real broker."""

from __future__ import annotations

import ast
import gzip
import io
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import read_topic
from lxml import html as lxml_html
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from producers.extract import extract
from producers.items import Skipped, item_from_page
from producers.readers import BadInput, FeedItem, ReadOptions, read_paths

CRAWL = Path(__file__).parent / "data" / "crawl"
PAGES = sorted(CRAWL.rglob("*.html"))
FLASK = CRAWL / "python-flask-doc"
REQUESTS = CRAWL / "python-requests-doc"
PYTHON = CRAWL / "python3.11-doc"
FLASK_PAGES = [page for page in PAGES if FLASK in page.parents]
NO_LANGUAGE = [REQUESTS, CRAWL / "octave-doc", CRAWL / "postgresql-doc-15"]  # pages that declare none
SITE = "https://docs.example.org/"
BOILERPLATE = [
    # what any Sphinx site wraps its pages in
    "Navigation", "Previous topic", "Next topic", "This Page", "Show Source", "Quick search", "Table of Contents",
    "© Copyright", "Created using Sphinx", "¶", "searchbox", "sphinxsidebar",
    # the Flask (Pallets) theme: related bar, sidebar links
    "Flask Documentation (2.2.x)", "Previous:", "Next:", "Project Links",
    # the Requests theme's sidebar
    "Useful Links", "Related Topics", "Documentation overview", "Requests @ GitHub", "Issue Tracker",
    "Requests is an elegant and simple HTTP library",
]
FENCED = re.compile(r"^(`{3,})(\w*)\n(.*?)\n\1$", re.DOTALL | re.MULTILINE)
TABLE_ROW = re.compile(r"^\|.+\|.+\|$", re.MULTILINE)


def read(*paths: Path | str) -> list[FeedItem | BadInput | Skipped]:
    return list(read_paths([str(p) for p in paths], ReadOptions()))


def documents(items: list) -> list[FeedItem]:
    return [item for item in items if isinstance(item, FeedItem)]


def with_boilerplate(texts: list[str]) -> dict[int, list[str]]:
    return {i: found for i, text in enumerate(texts) if (found := [m for m in BOILERPLATE if m in text])}


def code_blocks(text: str, language: str) -> list[str]:
    return [m.group(3) for m in FENCED.finditer(text) if m.group(2) == language]


@pytest.fixture(scope="module")
def crawl_items() -> dict[Path, FeedItem]:
    """Every page of the crawl through the feed's own readers (as `feed docs` reads .html files)."""
    items = read(*PAGES)
    assert all(isinstance(item, FeedItem) for item in items), [i for i in items if not isinstance(i, FeedItem)]
    return {Path(item.location): item for item in documents(items)}


# --- main content of real pages ----------------------------------------------------------------


def test_fewer_than_2_percent_of_crawled_pages_keep_boilerplate(crawl_items):
    assert len(crawl_items) == len(PAGES) >= 40
    found = with_boilerplate([item.text for item in crawl_items.values()])
    assert len(found) / len(crawl_items) < 0.02, found
    assert {item.extraction for item in crawl_items.values()} == {"main"}  # no page needed the fallback


def test_python_code_blocks_keep_their_indentation_and_parse(crawl_items):
    page = FLASK / "tutorial" / "factory.html"
    blocks = code_blocks(crawl_items[page].text, "python")
    verbatim = [pre.text_content().strip("\n") for pre in lxml_html.parse(str(page)).iter("pre")
                if "highlight-python" in (pre.getparent().getparent().get("class") or "")]
    extracted = code_blocks(extract(page.read_bytes()).text, "python")
    assert verbatim and extracted == verbatim  # exactly as on the page, blank lines and indentation included
    assert len(blocks) == len(verbatim)  # in the fed text too, where runs of blank lines and spaces collapse
    for block in blocks:
        ast.parse(block)
    assert any(line.startswith(" " * 8) for block in blocks for line in block.splitlines())  # nested levels
    # Across the crawl: the few that do not parse are wrong on the page itself (a missing colon in
    # views.html, hosts-file lines marked as Python in nginx.html, ...).
    every = [block for item in crawl_items.values() for block in code_blocks(item.text, "python")]
    parsed = sum(_parses(block) for block in every)
    assert len(every) > 50 and parsed / len(every) > 0.9


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def test_shell_code_blocks_pass_bash_syntax_check(crawl_items):
    # The Python FAQ's sh/Python polyglot (`#! /bin/sh` then `""":"`) is shell only to its first line.
    blocks = [block for path, item in crawl_items.items() for language in ("sh", "bash")
              for block in code_blocks(item.text, language) if PYTHON not in path.parents]
    assert blocks
    for block in blocks:
        check = subprocess.run(["bash", "-n"], input=block.encode(), capture_output=True, check=False)
        assert check.returncode == 0, (block, check.stderr)


def test_tables_become_markdown_rows_and_headings_markdown_headings(crawl_items):
    text = crawl_items[FLASK / "views.html"].text
    assert "| `/users/<id>` | `PATCH` | Update a user |" in TABLE_ROW.findall(text)
    # A Markdown table: its first row is followed by a separator row, once.
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert re.fullmatch(r"\|( --- \|)+", lines[first + 1]) and lines[first + 1].count("---") == lines[first].count("|") - 1
    assert sum(bool(re.fullmatch(r"\|( --- \|)+", line)) for line in lines[first:first + 20]) == 1
    assert text.startswith("# Class-based Views\n")
    assert "\n## Basic Reusable View\n" in text
    assert "Navigation" not in text and "](" not in text  # link text stays, targets go


def test_title_and_declared_language_are_in_meta(crawl_items):
    for path, item in crawl_items.items():
        assert item.meta.get("title"), path
        if any(folder in path.parents for folder in NO_LANGUAGE):  # none declared, and none is made up
            assert "language" not in item.meta
        else:
            assert item.meta["language"] == "en"
    assert crawl_items[FLASK / "quickstart.html"].meta == {"title": "Quickstart", "language": "en"}


def test_extract_takes_url_canonical_link_date_and_language_from_the_page():
    page = ("<html lang='de-AT'><head><title>Seite</title><link rel='canonical' href='https://x.example/a'>"
            "<meta property='article:published_time' content='2021-05-04'></head><body><article><h1>Seite</h1>"
            + "<p>Ein Absatz mit genug Text, damit er als Inhalt zählt, und noch etwas mehr Text dazu.</p>" * 3
            + "<pre class='language-python'>def f():\n\n    return 1  # 2024-01-01 00:00:00</pre></article></body></html>")
    found = extract(page.encode())
    assert found is not None and not found.fallback
    assert found.meta() == {"title": "Seite", "url": "https://x.example/a", "date": "2021-05-04", "language": "de-AT"}
    assert "```python\ndef f():\n\n    return 1  # 2024-01-01 00:00:00\n```" in found.text
    assert extract(page, url="https://given.example/").url == "https://given.example/"  # the given URL wins
    # in a web archive, the date is the capture's; the page's own is kept as `published`
    item = item_from_page(page, "crawl.warc@0", ReadOptions(), url="https://given.example/", fetched=WARC_DATE)
    assert item.meta == {"title": "Seite", "url": "https://given.example/", "date": WARC_DATE,
                         "published": "2021-05-04", "language": "de-AT"}


def test_pages_trafilatura_finds_nothing_in_go_to_the_counted_fallback(tmp_path):
    (tmp_path / "tiny.html").write_text("<p>Only a fragment.</p>")
    [item] = read(tmp_path / "tiny.html")
    assert item == FeedItem("Only a fragment.", str(tmp_path / "tiny.html"), {}, extraction="fallback")
    assert extract("") is None


# --- web archives ------------------------------------------------------------------------------

WARC_DATE = "2024-03-01T12:00:00Z"


def _http(status: str, content_type: str, *more: tuple[str, str]) -> StatusAndHeaders:
    return StatusAndHeaders(status, [("Content-Type", content_type), *more], protocol="HTTP/1.1")


def write_crawl_warc(path: Path, pages: list[Path], *, gzip_records: bool) -> dict[str, object]:
    """A WARC as a crawler writes it: warcinfo, then per page a request and its 200 response,
    plus a 404, a 301, an image and a metadata record, and last a page cut off mid-record.
    Returns the URLs of the pages, the skip reasons expected and the cut record's offset."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip_records)

    def write(uri: str, kind: str, payload: bytes, http: StatusAndHeaders | None = None, **kw: object) -> None:
        headers = {"WARC-Date": WARC_DATE}
        record = writer.create_warc_record(uri, kind, payload=io.BytesIO(payload), http_headers=http,
                                           warc_headers_dict=headers, **kw)
        writer.write_record(record)

    writer.write_record(writer.create_warcinfo_record(path.name, {"software": "synthstream tests"}))
    urls = []
    for page in pages:
        url = SITE + page.relative_to(CRAWL).as_posix()
        urls.append(url)
        write(url, "request", b"", StatusAndHeaders("GET /" + page.name + " HTTP/1.1", [("Host", "docs.example.org")],
                                                   is_http_request=True))
        write(url, "response", page.read_bytes(), _http("200 OK", "text/html; charset=utf-8"))
    write(SITE + "missing.html", "response", b"<html><body><h1>Not Found</h1></body></html>", _http("404 Not Found", "text/html"))
    write(SITE + "old/", "response", b"", _http("301 Moved Permanently", "text/html", ("Location", SITE)))
    write(SITE + "logo.png", "response", b"\x89PNG\r\n\x1a\n" + bytes(200), _http("200 OK", "image/png"))
    write(SITE + "logo.png", "metadata", b"via: " + SITE.encode(), warc_content_type="application/warc-fields")
    cut_at = out.tell()
    write(SITE + "cut.html", "response", (FLASK / "views.html").read_bytes(), _http("200 OK", "text/html"))
    path.write_bytes(out.getvalue()[:-2000])  # the crawler died while writing the last record
    return {"urls": urls, "cut_at": cut_at,
            "skipped": {"warcinfo record": 1, "request record": len(pages), "status 404": 1, "redirect 301": 1,
                        "not HTML (image/png)": 1, "metadata record": 1}}


def _skip_counts(items: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        if isinstance(item, Skipped):
            counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts


@pytest.mark.parametrize("name, gzip_records", [("crawl.warc.gz", True), ("crawl.warc", False)])
def test_warc_pages_arrive_with_url_and_date_and_everything_else_is_skipped_or_reported(tmp_path, name, gzip_records):
    pages = FLASK_PAGES[:12]
    path = tmp_path / name
    expected = write_crawl_warc(path, pages, gzip_records=gzip_records)
    items = read(path)

    docs = documents(items)
    assert [d.meta["url"] for d in docs] == expected["urls"]
    assert all(d.meta["date"] == WARC_DATE and d.meta["title"] and d.extraction == "main" for d in docs)
    assert not with_boilerplate([d.text for d in docs])
    by_url = {d.meta["url"]: d for d in docs}
    assert by_url[SITE + "python-flask-doc/appcontext.html"].text.startswith("# The Application Context\n")
    assert _skip_counts(items) == expected["skipped"]
    bad = [item for item in items if isinstance(item, BadInput)]
    assert bad == [BadInput(f"{path}@{expected['cut_at']}", bad[0].reason)]
    assert bad[0].reason.startswith("record cut short")


def test_a_web_archive_cut_inside_record_headers_or_with_junk_is_reported_where_it_breaks(tmp_path):
    whole = tmp_path / "whole.warc.gz"
    expected = write_crawl_warc(whole, FLASK_PAGES[:2], gzip_records=True)
    intact = whole.read_bytes()[:expected["cut_at"]]  # the records before the cut one
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(whole.read_bytes()[:expected["cut_at"] + 30])  # the first bytes of the last record's member
    plain = gzip.decompress(intact)
    junk = tmp_path / "junk.warc"
    junk.write_bytes(plain + b"this is not a record\r\n\r\n")

    for path, offset, reason in ((cut, len(intact), "record cut short"), (junk, len(plain), "not a whole WARC/ARC record")):
        items = read(path)
        assert len(documents(items)) == 2
        [bad] = [item for item in items if isinstance(item, BadInput)]
        assert bad.location == f"{path}@{offset}" and bad.reason.startswith(reason), bad


def test_wet_conversion_records_are_read_as_text(tmp_path):
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    writer.write_record(writer.create_warcinfo_record("crawl.warc.wet.gz", {"software": "tests"}))
    text = "Converted text of a page.\n\n    indented line stays indented\nand a last line"
    record = writer.create_warc_record("https://a.example/page", "conversion", payload=io.BytesIO(text.encode()),
                                       warc_content_type="text/plain", warc_headers_dict={"WARC-Date": WARC_DATE})
    writer.write_record(record)
    path = tmp_path / "crawl.warc.wet.gz"
    path.write_bytes(out.getvalue())
    items = read(path)
    assert items[0] == Skipped(f"{path}@0", "warcinfo record")
    assert items[1] == FeedItem(text, items[1].location, {"url": "https://a.example/page", "date": WARC_DATE},
                                url="https://a.example/page")
    assert items[1].source == "https://a.example/page"  # a WET record is known by its URL too


def test_arc_files_are_read_too(tmp_path):
    page = (FLASK / "views.html").read_bytes()
    http = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + page
    header_body = b"1 0 synthstream\nURL IP-address Archive-date Content-type Archive-length\n"
    arc_records = [
        b"filedesc://crawl.arc 0.0.0.0 20240301120000 text/plain %d\n" % len(header_body) + header_body + b"\n",
        b"https://docs.example.org/views.html 127.0.0.1 20240301120000 text/html %d\n" % len(http) + http + b"\n",
    ]
    path = tmp_path / "crawl.arc.gz"
    path.write_bytes(b"".join(gzip.compress(record) for record in arc_records))  # one gzip member a record
    items = read(path)
    assert [type(i) for i in items] == [Skipped, FeedItem]
    assert items[1].meta == {"url": "https://docs.example.org/views.html", "date": "2024-03-01T12:00:00Z",
                             "title": "Class-based Views", "language": "en"}
    assert items[1].text.startswith("# Class-based Views\n")

    whole = tmp_path / "whole.arc.gz"
    whole.write_bytes(gzip.compress(b"".join(arc_records)))  # gzip of the whole file: said so, no crash
    assert read(whole)[-1] == BadInput(str(whole), read(whole)[-1].reason)
    assert read(whole)[-1].reason.startswith("gzip-compressed as a whole")


def test_stdin_starting_with_warc_magic_is_read_as_a_web_archive(tmp_path, monkeypatch):
    path = tmp_path / "crawl.warc.gz"
    expected = write_crawl_warc(path, FLASK_PAGES[:3], gzip_records=True)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    items = read("-")
    assert [d.meta["url"] for d in documents(items)] == expected["urls"]
    assert [i.location for i in items if isinstance(i, BadInput)] == [f"<stdin>@{expected['cut_at']}"]


def test_a_page_is_known_by_its_url_and_a_row_by_its_line_with_its_url_kept():
    from producers.root_records import to_record

    row = FeedItem("text", "rows.jsonl:3", {"url": "https://a.example/x", "title": "X"})
    record = to_record("docs", row).data
    assert record["source"] == "rows.jsonl:3" and record["meta"]["url"] == "https://a.example/x"
    page = FeedItem("text", "crawl.warc.gz@1234", {"url": "https://a.example/y"}, extraction="main",
                    url="https://a.example/y")
    assert to_record("docs", page).data["source"] == "https://a.example/y"
    assert to_record("docs", FeedItem("text", "page.html", {}, extraction="main")).data["source"] == "page.html"


# --- end to end: feed docs through the CLI onto the real broker ----------------------------------


def test_feed_docs_from_a_warc_puts_clean_documents_with_url_and_title_on_the_docs_topic(pipeline, broker, tmp_path):
    path = tmp_path / "crawl.warc.gz"
    expected = write_crawl_warc(path, PAGES, gzip_records=True)
    result = pipeline.cli("feed", "docs", str(path), "--report", str(tmp_path / "report.json"))
    log = result.stderr.decode()
    # the three sites' search pages say the same (their results need JavaScript): one record
    assert f"fed {len(PAGES) - 2} records to {pipeline.prefix}docs; 2 exact duplicates collapsed" in log
    assert f"{sum(expected['skipped'].values())} non-document records skipped" in log
    assert f"{len(PAGES)} HTML pages extracted, 0 of them by the fallback extractor" in log
    assert f"skipped {path}@{expected['cut_at']}: record cut short" in log
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["skipped"] == expected["skipped"]
    assert report["extraction"] == {"main": len(PAGES), "fallback": 0}

    records = read_topic(broker.bootstrap_servers, pipeline.prefix + "docs")
    assert len(records) == len(PAGES) - 2
    data = [record["data"] for record in records]
    assert {d["meta"]["url"] for d in data} == set(expected["urls"]) - {SITE + "python-requests-doc/search.html",
                                                                   SITE + "python3.11-doc/search.html"}
    assert all(d["source"] == d["meta"]["url"] and d["meta"]["title"] and d["meta"]["date"] == WARC_DATE for d in data)
    assert len(with_boilerplate([d["text"] for d in data])) / len(data) < 0.02
    factory = next(d for d in data if d["meta"]["url"].endswith("tutorial/factory.html"))
    for block in code_blocks(factory["text"], "python"):
        ast.parse(block)  # indentation survives the feed's normalisation too
    # `tap docs` names each page by its title and URL before its text.
    lines = pipeline.cli("tap", "docs").stdout.decode().splitlines()
    assert len(lines) == len(data)
    for d in data:
        assert any(f"{d['meta']['title']} | {d['meta']['url']}: " in line for line in lines), d["meta"]


def test_no_date_is_taken_from_the_text_of_a_page():
    body = ("<p>This page was fetched 2024-05-01 and last edited on March 3, 2023 by the team.</p>"
            + "<p>A paragraph with enough text to count as the page's content, and a little more.</p>" * 3)
    for page in (f"<html><head><title>T</title></head><body><main>{body}</main></body></html>",
                 f"<html><head><title>T</title></head><body><article>{body}</article></body></html>"):
        found = extract(page)
        assert found is not None and "fetched 2024-05-01" in found.text
        assert found.date is None and "date" not in found.meta()
    declared = "<html><head><meta name='date' content='2021-05-04'></head><body><main>" + body + "</main></body></html>"
    assert extract(declared).date == "2021-05-04"  # what the page declares in its head still counts
