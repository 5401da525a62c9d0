"""Input readers of the feeder: JSONL, Parquet, directories, HTML, stdin and following."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producers.html_text import extract_main_text
from producers.readers import BadInput, FeedItem, ReadOptions, follow_paths, normalise_text, read_paths

WAIT = 3.0  # upper bound of any wait in the follow tests; they normally take a few polls


def jsonl(*rows: Any) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def read(*paths: Path | str, **opts: Any) -> list[FeedItem | BadInput]:
    return list(read_paths([str(p) for p in paths], ReadOptions(**opts)))


def split(items: list[FeedItem | BadInput]) -> tuple[list[FeedItem], list[BadInput]]:
    return [i for i in items if isinstance(i, FeedItem)], [i for i in items if isinstance(i, BadInput)]


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_reports_each_bad_line_by_location_and_yields_every_good_line(tmp_path: Path) -> None:
    path = tmp_path / "crawl.jsonl"
    path.write_bytes(jsonl(
        {"text": "first  document", "url": "https://a.example/1", "title": "A"},  # 1
        b'{"text": "unterminated',  # 2
        {"text": "second document", "url": "https://a.example/2"},  # 3
        {"text": " \n\t "},  # 4
        b'{"text": "caf\xe9"}',  # 5: Latin-1 byte, not UTF-8
        b"\x89PNG\r\x1a\x00\x00\x00\rIHDR\xff\xfe\x00\x10binary",  # 6
        {"text": "x" * (5 * 1024 * 1024)},  # 7
        b"",  # 8: blank lines are skipped silently
        b"[1, 2, 3]",  # 9
        {"body": "no text field"},  # 10
        {"text": 42},  # 11
        {"text": "third document", "tags": ["a", "b"]},  # 12
    ))
    good, bad = split(read(path))

    assert [(g.location, g.text, g.meta) for g in good] == [
        (f"{path}:1", "first document", {"url": "https://a.example/1", "title": "A"}),
        (f"{path}:3", "second document", {"url": "https://a.example/2"}),
        (f"{path}:12", "third document", {"tags": ["a", "b"]}),
    ]
    reasons = {b.location: b.reason for b in bad}
    assert list(reasons) == [f"{path}:{n}" for n in (2, 4, 5, 6, 7, 9, 10, 11)]
    assert reasons[f"{path}:2"].startswith("malformed JSON: Unterminated string")
    assert reasons[f"{path}:4"] == "empty document"
    assert reasons[f"{path}:5"] == "not valid UTF-8 (byte 0xe9 at offset 13)"
    assert reasons[f"{path}:6"] == "not valid UTF-8 (byte 0x89 at offset 0)"
    assert reasons[f"{path}:7"].startswith("document too large: ")
    assert reasons[f"{path}:9"] == "JSON value is not an object"
    assert reasons[f"{path}:10"] == "missing text field 'text'"
    assert reasons[f"{path}:11"] == "text field is not a string"


def test_malformed_json_reason_names_the_problem_and_column(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "a" "b"}\n')
    assert read(path) == [BadInput(f"{path}:1", "malformed JSON: Expecting ',' delimiter (col 14)")]


def test_text_size_limit_is_on_the_text_in_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl({"text": "é" * 60}, {"text": "e" * 100}, {"text": "e" * 101, "pad": "p" * 300}))
    items = read(path, max_bytes=100)
    assert items[0] == BadInput(f"{path}:1", "document too large: 120 bytes > limit 100")
    assert isinstance(items[1], FeedItem)
    assert items[2] == BadInput(f"{path}:3", "document too large: 101 bytes > limit 100")


def test_huge_line_is_rejected_without_parsing_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl({"text": "y" * 500_000}, {"text": "after"}))
    items = read(path, max_bytes=1000)
    assert isinstance(items[0], BadInput) and items[0].location == f"{path}:1"
    assert items[0].reason.startswith("document too large: line of 500012 bytes > line limit 69536")
    assert items[1] == FeedItem("after", f"{path}:2", {})


def test_custom_text_field_and_bom_and_crlf_and_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "seeds.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "Explain X.", "document": "doc"}\r\n'
                     + b'{"instruction": "Summarise Y."}')
    items = read(path, text_field="instruction")
    assert items == [FeedItem("Explain X.", f"{path}:1", {"document": "doc"}),
                     FeedItem("Summarise Y.", f"{path}:2", {})]
    assert read(path) == [BadInput(f"{path}:1", "missing text field 'text'"),
                          BadInput(f"{path}:2", "missing text field 'text'")]


def test_gzip_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl({"text": "zipped"})))
    assert read(path) == [FeedItem("zipped", f"{path}:1", {})]
    broken = tmp_path / "b.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    [bad] = read(broken)
    assert bad.location == str(broken) and bad.reason.startswith("cannot read: ")


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(jsonl({"text": "piped"}, b"oops"))))
    assert read("-") == [FeedItem("piped", "<stdin>:1", {}),
                         BadInput("<stdin>:2", "malformed JSON: Expecting value (col 1)")]


def test_missing_and_unsupported_paths_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    assert read(tmp_path / "nope.jsonl", tmp_path / "data.csv") == [
        BadInput(str(tmp_path / "nope.jsonl"), "no such file or directory"),
        BadInput(str(tmp_path / "data.csv"), "unsupported file type"),
    ]


# --- Parquet -----------------------------------------------------------------------------------


def test_parquet_rows_with_meta_and_a_null_text(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    table = pa.table({"text": ["one", None, "  ", "four"], "url": ["u1", "u2", "u3", "u4"]})
    pq.write_table(table, path, row_group_size=2)
    assert read(path) == [
        FeedItem("one", f"{path}:1", {"url": "u1"}),
        BadInput(f"{path}:2", "text field is not a string"),
        BadInput(f"{path}:3", "empty document"),
        FeedItem("four", f"{path}:4", {"url": "u4"}),
    ]
    assert read(path, text_field="body") == [BadInput(str(path), "missing text field 'body'")]


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"PAR1 but not really")
    [bad] = read(path)
    assert bad.location == str(path) and bad.reason.startswith("cannot read: ")


# --- Directories and HTML ----------------------------------------------------------------------

PAGE = """<!doctype html><html><head><title>The Page &amp; Co</title>
<script>var menu = "Script text";</script><style>body { color: red }</style></head>
<body><nav><a href="/">Home</a> <a href="/about">Navigation link</a></nav>
<header>Site header</header>
<main><article><h1>Article heading</h1><p>First paragraph with &eacute;l&egrave;ve and
<b>bold</b> words.</p><p>Second paragraph.</p><!-- a comment --></article>
<article><p>Short related teaser.</p></article></main>
<aside>Sidebar</aside><footer>Copyright footer</footer></body></html>"""


def test_html_main_text_keeps_the_article_and_drops_boilerplate() -> None:
    text, title = extract_main_text(PAGE)
    assert title == "The Page & Co"
    assert text == "Article heading\nFirst paragraph with élève and bold words.\nSecond paragraph."


def test_html_without_main_uses_the_body_and_blocks_become_lines() -> None:
    text, title = extract_main_text("<body><div>one<br>two</div><ul><li>three<li>four</ul>"
                                    "<table><tr><td>a<td>b</table><form>Search</form></body>")
    assert (text, title) == ("one\ntwo\nthree\nfour\na b", None)


def test_directory_of_text_markdown_html_and_data_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Plain   text\r\n\r\n\r\n\r\nfile.\n")
    (tmp_path / "b.md").write_text("# Heading\n\nMarkdown body.")
    (tmp_path / "sub" / "c.html").write_text(PAGE)
    (tmp_path / "sub" / "d.jsonl").write_bytes(jsonl({"text": "from jsonl"}))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # other extension: skipped
    (tmp_path / "notes.csv").write_text("x,y\n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "nul.txt").write_bytes(b"text\x00with nul")
    (tmp_path / "empty.md").write_text("  \n")

    items = read(tmp_path)
    assert items == [
        FeedItem("Plain text\n\nfile.", str(tmp_path / "a.txt"), {}),
        FeedItem("# Heading\n\nMarkdown body.", str(tmp_path / "b.md"), {"title": "Heading"}),
        BadInput(str(tmp_path / "binary.txt"), "not valid UTF-8 (byte 0x89 at offset 0)"),
        BadInput(str(tmp_path / "empty.md"), "empty document"),
        BadInput(str(tmp_path / "nul.txt"), "binary file (contains NUL bytes)"),
        # the page's <main> (producers.extract), as Markdown, a paragraph a line; the title is its one <h1>
        FeedItem("# Article heading\n\nFirst paragraph with élève and **bold** words.\n\nSecond paragraph.\n\n"
                 "Short related teaser.", str(tmp_path / "sub" / "c.html"), {"title": "Article heading"},
                 extraction="main"),
        FeedItem("from jsonl", f"{tmp_path / 'sub' / 'd.jsonl'}:1", {}),
    ]


# --- normalise_text ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("  a \t b  ", "a b"),
    ("line one   \r\nline two\r\n\r\n\r\n\r\nline three", "line one\nline two\n\nline three"),
    ("a\n \n\t\n \nb", "a\n\nb"),
    ("ﬁne\u00a0print　wide", "ﬁne\u00a0print　wide"),  # Unicode as written: no NFKC
    ("e\u0301 2⁻⁵³ ſ \u212a Ⅰ", "\u00e9 2⁻⁵³ ſ \u212a Ⅰ"),  # NFC composes, nothing changes meaning
    ("\n\n  \n", ""),
])
def test_normalise_text(raw: str, expected: str) -> None:
    assert normalise_text(raw) == expected
    assert normalise_text(expected) == expected  # idempotent


def test_normalise_text_is_idempotent_on_messy_input() -> None:
    messy = " \t x\u2003\u00a0y \r\n\r \n\t\n z\u0301 \x85 \n\n\n\ufb03 \u2028 end \t\n "
    once = normalise_text(messy)
    assert normalise_text(once) == once


# --- follow_paths ------------------------------------------------------------------------------


async def next_items(stream: Any, n: int) -> list[FeedItem | BadInput]:
    return [await asyncio.wait_for(anext(stream), WAIT) for _ in range(n)]


@pytest.mark.asyncio
async def test_follow_directory_reads_files_added_later_once_they_are_complete(tmp_path: Path) -> None:
    (tmp_path / "first.txt").write_text("present at start")
    stop = asyncio.Event()
    stream = follow_paths([str(tmp_path)], ReadOptions(), poll_interval=0.05, stop=stop)
    try:
        assert await next_items(stream, 1) == [FeedItem("present at start", str(tmp_path / "first.txt"), {})]

        (tmp_path / "first.txt").write_text("changed: not read again")
        (tmp_path / "ignored.csv").write_text("a,b")
        growing = tmp_path / "second.md"
        parts = [f"part{i}" for i in range(30)]

        async def write_slowly() -> None:  # grows across many polls: must not be read half-written
            with growing.open("w") as f:
                for part in parts:
                    f.write(part + " ")
                    f.flush()
                    await asyncio.sleep(0.01)

        writer = asyncio.create_task(write_slowly())
        assert await next_items(stream, 1) == [FeedItem(" ".join(parts), str(growing), {})]
        assert writer.done()
        (tmp_path / "third.jsonl").write_bytes(jsonl({"text": "third"}))
        assert await next_items(stream, 1) == [FeedItem("third", f"{tmp_path / 'third.jsonl'}:1", {})]
    finally:
        stop.set()
    assert [item async for item in stream] == []  # ends promptly once stopped


@pytest.mark.asyncio
async def test_follow_jsonl_tails_complete_lines_and_restarts_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.write_bytes(jsonl({"text": "one"}))
    stop = asyncio.Event()
    stream = follow_paths([str(path)], ReadOptions(), poll_interval=0.05, stop=stop)
    try:
        assert await next_items(stream, 1) == [FeedItem("one", f"{path}:1", {})]

        with path.open("ab") as f:
            f.write(jsonl({"text": "two"}) + b'{"text": "thr')  # the last line is not complete yet
        assert await next_items(stream, 1) == [FeedItem("two", f"{path}:2", {})]
        with path.open("ab") as f:
            f.write(b'ee"}\nnot json\n')
        assert await next_items(stream, 2) == [
            FeedItem("three", f"{path}:3", {}),
            BadInput(f"{path}:4", "malformed JSON: Expecting value (col 1)"),
        ]

        path.write_bytes(jsonl({"text": "after truncation"}))  # smaller than before: read from 0
        assert await next_items(stream, 1) == [FeedItem("after truncation", f"{path}:1", {})]
    finally:
        stop.set()
    assert [item async for item in stream] == []


@pytest.mark.asyncio
async def test_follow_reads_unfollowable_inputs_once_and_reports_missing_paths(tmp_path: Path) -> None:
    text_file = tmp_path / "a.txt"
    text_file.write_text("once")
    stream = follow_paths([str(text_file), str(tmp_path / "missing")], ReadOptions(), poll_interval=0.05)
    items = await asyncio.wait_for(_collect(stream), WAIT)  # nothing to follow: the stream ends
    assert items == [FeedItem("once", str(text_file), {}),
                     BadInput(str(tmp_path / "missing"), "no such file or directory")]


async def _collect(stream: Any) -> list[FeedItem | BadInput]:
    return [item async for item in stream]


@pytest.mark.asyncio
async def test_follow_keeps_the_event_loop_responsive(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(*({"text": f"document {i}"} for i in range(20_000))))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    stop = asyncio.Event()
    count = 0
    try:
        async for _ in follow_paths([str(path)], ReadOptions(), poll_interval=0.05, stop=stop):
            count += 1
            if count == 20_000:
                stop.set()
    finally:
        task.cancel()
    assert count == 20_000
    assert ticks > 20  # the reading ran in worker threads, batch by batch


def test_a_markdown_file_is_titled_by_its_first_heading_and_a_text_file_is_not(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("---\nauthor: x\n---\n\n# The Printing Press\n\nBody text.\n\n# Later heading\n")
    (tmp_path / "b.md").write_text("Intro before any heading.\n\n# Not the title\n")
    (tmp_path / "c.txt").write_text("# Looks like a heading\n\nBut this is plain text.\n")
    items = {Path(item.location).name: item for item in read_paths([str(tmp_path)], ReadOptions())}
    assert items["a.md"].meta == {"title": "The Printing Press"}
    assert items["b.md"].meta == {} and items["c.txt"].meta == {}
