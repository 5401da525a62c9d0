"""The formats the feeder reads and how each is parsed into items: JSON lines (plain or gzip,
from a file or any binary stream, whole or as it grows), Parquet rows, and .txt/.md/.html
documents.

Everything streams: JSONL line by line (an over-long line is skipped in chunks, never held),
Parquet by record batches, a document bounded by its size limit. Read and format errors end an
input with one BadInput (`guarded`) instead of an exception.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from producers.html_text import extract_main_text
from producers.items import (
    BadInput,
    FeedItem,
    Item,
    ReadOptions,
    Rejected,
    attempt,
    describe_error,
    item_from_row,
    item_from_text,
)

Kind = Literal["jsonl", "parquet", "text", "html"]

_BOM = b"\xef\xbb\xbf"
_SUFFIX_KINDS: dict[str, Kind] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
    ".txt": "text", ".md": "text", ".html": "html", ".htm": "html",
}
# Raw inputs are allowed to be bigger than the text they carry (JSON escapes such as \uXXXX
# triple non-ASCII text, rows have other fields, HTML has markup); beyond these multiples of
# max_bytes they are rejected before being parsed at all.
_RAW_SLACK = 65_536
_LINE_FACTOR = 4
_HTML_FACTOR = 16
_SKIP_CHUNK = 1 << 20  # over-long lines are skipped in chunks of this size, never held whole
_PARQUET_BATCH_ROWS = 256
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, pa.ArrowException)


def file_kind(path: str) -> Kind | None:
    """The format of a file by its name, or None if it is not one the feeder reads."""
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):  # only JSONL is read compressed
        return "jsonl" if _SUFFIX_KINDS.get(os.path.splitext(name[:-3])[1]) == "jsonl" else None
    return _SUFFIX_KINDS.get(os.path.splitext(name)[1])


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})") from None


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
    row = _load_json(_decode(line))
    if not isinstance(row, dict):
        raise Rejected("JSON value is not an object")
    return item_from_row(row, location, opts)


# JSON lines ----------------------------------------------------------------------------------------
def _line_limit(opts: ReadOptions) -> int:
    return _LINE_FACTOR * opts.max_bytes + _RAW_SLACK


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


def _read_jsonl_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from read_jsonl(f, path, opts)  # type: ignore[arg-type]


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
    return (_HTML_FACTOR if kind == "html" else _LINE_FACTOR) * opts.max_bytes + _RAW_SLACK


def _read_document(path: str, kind: Kind, opts: ReadOptions) -> FeedItem:
    """A .txt/.md file is one text; an .html/.htm file is its page's main text."""
    limit = _file_limit(kind, opts)
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # bounded: the file may be huge, or still growing
        if len(data) > limit:
            size = os.fstat(f.fileno()).st_size
            raise Rejected(f"document too large: file of {size} bytes > file limit {limit}")
    text = _decode(data.removeprefix(_BOM))
    if "\x00" in text:
        raise Rejected("binary file (contains NUL bytes)")
    meta: dict[str, Any] = {}
    if kind == "html":
        try:
            text, title = extract_main_text(text)
        except AssertionError as error:  # html.parser's way of giving up on malformed markup
            raise Rejected(f"cannot parse HTML: {error}") from None
        if title:
            meta["title"] = title
    return item_from_text(text, path, meta, opts)


# One file, whatever its format ----------------------------------------------------------------------
def read_file(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    """Every item of one file of a known kind; problems (read errors included) are BadInput."""
    if kind == "jsonl":
        items = _read_jsonl_file(path, opts)
    elif kind == "parquet":
        items = _read_parquet(path, opts)
    else:
        items = _document_items(path, kind, opts)
    yield from guarded(path, items)


def _document_items(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    yield attempt(path, _read_document, path, kind, opts)


def guarded(location: str, items: Iterator[Item]) -> Iterator[Item]:
    """I/O and format errors end that input with one BadInput instead of an exception."""
    try:
        yield from items
    except READ_ERRORS as error:
        yield BadInput(location, f"cannot read: {describe_error(error)}")
