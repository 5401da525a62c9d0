"""The formats the feeder reads and how each is parsed into items: JSON lines (plain or gzip,
from a file or any binary stream, whole or as it grows), Parquet rows, .txt/.md/.html documents
(an HTML page's main content: producers.extract), and web archives (WARC/WET/ARC: producers.warc).

Everything streams: JSONL line by line (an over-long line is skipped in chunks, never held),
Parquet by record batches, web archives record by record, a document bounded by its size limit.
Read and format errors end an input with one BadInput (`guarded`) instead of an exception.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from producers.items import (
    LINE_FACTOR,
    RAW_SLACK,
    BadInput,
    FeedItem,
    Item,
    OverCap,
    ReadOptions,
    Rejected,
    attempt,
    decode_utf8,
    describe_error,
    html_limit,
    item_from_page,
    item_from_row,
    item_from_text,
)
from producers.warc import MAGIC as WARC_MAGIC
from producers.warc import read_warc, read_warc_file

Kind = Literal["jsonl", "parquet", "text", "html", "warc"]

_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_SUFFIX_KINDS: dict[str, Kind] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
    ".txt": "text", ".md": "text", ".html": "html", ".htm": "html",
    ".warc": "warc", ".arc": "warc", ".wet": "warc",  # crawl.warc.wet.gz is a WET file
}
# A Markdown file's title: its first level-1 heading, if one starts its text (after front matter at most).
_MARKDOWN_TITLE = re.compile(r"\A(?:---\n.*?\n---\n)?\s*# +([^\n]+)", re.DOTALL)
_COMPRESSED_KINDS = frozenset({"jsonl", "warc"})  # the kinds also read gzip-compressed
_SNIFF_BYTES = 4096  # of a gzip stream: enough to decompress the first few bytes of its first member
_SKIP_CHUNK = 1 << 20  # over-long lines are skipped in chunks of this size, never held whole
_PARQUET_BATCH_ROWS = 256
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, pa.ArrowException)


def file_kind(path: str) -> Kind | None:
    """The format of a file by its name, or None if it is not one the feeder reads."""
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        kind = _SUFFIX_KINDS.get(os.path.splitext(name[:-3])[1])
        return kind if kind in _COMPRESSED_KINDS else None
    return _SUFFIX_KINDS.get(os.path.splitext(name)[1])


def _load_json(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as strict_error:
        # orjson is fast and strict (it also refuses NaN and lone surrogates, which could not be
        # sent on as JSON anyway); the standard parser words plain syntax errors better.
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            raise Rejected(f"malformed JSON: {error.msg} (col {error.colno})") from None
        except RecursionError:
            pass
        raise Rejected(f"malformed JSON: {strict_error.msg} (col {strict_error.colno})") from None


def _from_json_line(line: bytes, location: str, opts: ReadOptions) -> FeedItem:
    row = _load_json(decode_utf8(line))
    if not isinstance(row, dict):
        raise Rejected("JSON value is not an object")
    return item_from_row(row, location, opts)


# JSON lines ----------------------------------------------------------------------------------------
def _line_limit(opts: ReadOptions) -> int:
    return LINE_FACTOR * opts.max_bytes + RAW_SLACK


@dataclass
class LineCursor:
    """How far a JSONL stream has been consumed; lets a followed file resume where it was."""

    offset: int = 0  # bytes consumed: the start of the next unread line
    line_no: int = 0  # lines consumed
    overlong: int = 0  # bytes so far of an over-long line still being skipped (0: none)


def _strip_line(line: bytes, at_start: bool) -> bytes:
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    return line.removeprefix(_BOM) if at_start else line


def _raw_lines(f: BinaryIO, cur: LineCursor, cap: int, final: bool) -> Iterator[tuple[int, bytes | int]]:
    """(line number, line) for each complete line from f, which is positioned at cur.offset, or
    (line number, size) for a line longer than cap: that one is skipped in chunks, never held.

    An unterminated last line counts only if `final` (the stream has ended); otherwise it is
    left unconsumed, as a writer may still be appending to it."""
    while True:
        if cur.overlong:
            chunk = f.readline(_SKIP_CHUNK)
            cur.offset += len(chunk)
            cur.overlong += len(chunk)
            if chunk.endswith(b"\n") or (not chunk and final):
                cur.line_no += 1
                size, cur.overlong = cur.overlong - chunk.endswith(b"\n"), 0
                yield cur.line_no, size
            elif not chunk:
                return
            continue
        start = cur.offset
        line = f.readline(cap + 1)
        if line.endswith(b"\n") or (line and final and len(line) <= cap):
            cur.offset += len(line)
            cur.line_no += 1
            yield cur.line_no, _strip_line(line, at_start=start == 0)
        elif len(line) > cap:
            cur.offset += len(line)
            cur.overlong = len(line)
        else:
            return  # end of the data, or an unterminated line to wait for


def jsonl_items(f: BinaryIO, name: str, cur: LineCursor, opts: ReadOptions, final: bool) -> Iterator[Item]:
    """Items of the lines of f from `cur` on, located as name:line; `final` as for _raw_lines."""
    cap = _line_limit(opts)
    for line_no, line in _raw_lines(f, cur, cap, final):
        location = f"{name}:{line_no}"
        if isinstance(line, int):
            yield BadInput(location, f"document too large: line of {line} bytes > line limit {cap}")
        elif line.strip():  # blank lines are not bad input
            yield attempt(location, _from_json_line, line, location, opts)


def read_jsonl(f: BinaryIO, name: str, opts: ReadOptions) -> Iterator[Item]:
    """Items of a whole JSONL stream (a file, or stdin) that has ended."""
    yield from jsonl_items(f, name, LineCursor(), opts, final=True)


class _CappedLines:
    """A decompressing stream's lines, counted: past `cap` bytes the file's reading ends (a gzip
    bomb of one endless line is skipped in chunks, but not for ever)."""

    def __init__(self, stream: BinaryIO, cap: int) -> None:
        self.stream = stream
        self.cap = cap
        self.read = 0

    def readline(self, size: int = -1) -> bytes:
        line = self.stream.readline(size)
        self.read += len(line)
        if self.read > self.cap:
            raise OverCap(f"file decompresses to more than {self.cap} bytes (feed.max_file_bytes): the rest of it "
                          f"is skipped")
        return line


def _read_jsonl_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    if not path.lower().endswith(".gz"):
        with open(path, "rb") as f:
            yield from read_jsonl(f, path, opts)
        return
    with gzip.open(path, "rb") as f:
        capped = _CappedLines(f, opts.max_file_bytes)
        cursor = LineCursor()
        try:
            yield from jsonl_items(capped, path, cursor, opts, final=True)  # type: ignore[arg-type]
        except OverCap as over:
            yield BadInput(f"{path}:{cursor.line_no + 1}", str(over))


# Parquet and documents ----------------------------------------------------------------------------
def _read_parquet(path: str, opts: ReadOptions) -> Iterator[Item]:
    with pq.ParquetFile(path) as parquet:
        if opts.text_field not in parquet.schema_arrow.names:
            yield BadInput(path, f"missing text field {opts.text_field!r}")
            return
        rows = itertools.count(1)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                location = f"{path}:{next(rows)}"
                yield attempt(location, item_from_row, row, location, opts)


def _file_limit(kind: Kind, opts: ReadOptions) -> int:
    return html_limit(opts) if kind == "html" else _line_limit(opts)


def _read_document(path: str, kind: Kind, opts: ReadOptions) -> FeedItem:
    """A .txt/.md file is one text; an .html/.htm file is its page's main content, decoded as
    the page declares (not necessarily UTF-8)."""
    limit = _file_limit(kind, opts)
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # bounded: the file may be huge, or still growing
        if len(data) > limit:
            size = os.fstat(f.fileno()).st_size
            raise Rejected(f"document too large: file of {size} bytes > file limit {limit}")
    if kind == "html":
        if b"\x00" in data:
            raise Rejected("binary file (contains NUL bytes)")
        return item_from_page(data, path, opts)
    text = decode_utf8(data.removeprefix(_BOM))
    if "\x00" in text:
        raise Rejected("binary file (contains NUL bytes)")
    heading = _MARKDOWN_TITLE.search(text[:2000]) if path.endswith(".md") else None
    return item_from_text(text, path, {"title": heading.group(1).strip()} if heading else {}, opts)


# One file, whatever its format ----------------------------------------------------------------------
def read_file(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    """Every item of one file of a known kind; problems (read errors included) are BadInput, and
    so is a file with nothing in it (empty, or nothing once decompressed): it says so."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False  # the reader reports why it cannot read it
    if empty:
        yield BadInput(path, "empty file: nothing to read")
        return
    found = False
    for item in guarded(path, _file_items(path, kind, opts)):
        found = True
        yield item
    if not found:
        yield BadInput(path, "nothing to read in it (empty once decompressed, or blank lines only)")


def _file_items(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    if kind == "jsonl":
        items = _read_jsonl_file(path, opts)
    elif kind == "parquet":
        items = _read_parquet(path, opts)
    elif kind == "warc":
        items = read_warc_file(path, opts)
    else:
        items = _document_items(path, kind, opts)
    yield from items


def _document_items(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    yield attempt(path, _read_document, path, kind, opts)


# A stream of unknown format (stdin) --------------------------------------------------------------------
class _Replayed(io.RawIOBase):
    """The bytes already read to sniff a stream's format, then the rest of the stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head = head
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read1(len(buffer)) if hasattr(self.rest, "read1") else self.rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _is_web_archive(head: bytes) -> bool:
    if head.startswith(_GZIP_MAGIC):  # a gzip WARC/ARC: look at the start of its first member
        head = zlib.decompressobj(wbits=31).decompress(head, 16)
    return head.startswith(WARC_MAGIC)


def read_stream(f: BinaryIO, name: str, opts: ReadOptions) -> Iterator[Item]:
    """Items of a stream that has ended, by its first bytes: a web archive (WARC/ARC, plain or
    gzip) or else JSON lines. A JSONL stream is decided on its first two bytes, so a live
    producer's lines are not held back."""
    head = f.read(2)
    if head.startswith(_GZIP_MAGIC):
        head += f.read(_SNIFF_BYTES)
    elif any(magic.startswith(head) for magic in WARC_MAGIC) and head:
        head += f.read(max(len(magic) for magic in WARC_MAGIC) - len(head))
    stream = io.BufferedReader(_Replayed(head, f))
    try:
        is_archive = _is_web_archive(head)
    except zlib.error:
        is_archive = False
    yield from (read_warc(stream, name, opts) if is_archive else read_jsonl(stream, name, opts))


def guarded(location: str, items: Iterator[Item]) -> Iterator[Item]:
    """I/O and format errors end that input with one BadInput instead of an exception."""
    try:
        yield from items
    except READ_ERRORS as error:
        yield BadInput(location, f"cannot read: {describe_error(error)}")
