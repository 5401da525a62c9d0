"""JSON lines (`.jsonl`, `.json`, `.ndjson`; plain or gzip): one document (or seed) per line, from a
file or any binary stream, whole or as it grows. Lines stream: an over-long line is skipped in
chunks, never held; a gzip file's decompressed size is capped (`max_file_bytes`). Counted by
scanning bytes for newlines (plain files, within the feed's scan budget); followed like `tail -F`."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from producers.formats.base import READ_ERRORS, CountBudget, InputFormat, NotCheap
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
    item_from_row,
)

_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20  # over-long lines are skipped in chunks of this size, never held whole
_COUNT_CHUNK = 1 << 20


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



def line_limit(opts: ReadOptions) -> int:
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
    cap = line_limit(opts)
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


def read_jsonl_file(path: str, opts: ReadOptions) -> Iterator[Item]:
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


def count_lines(path: str, budget: CountBudget) -> int:
    """Lines of a plain JSONL file (blank ones too: an estimate), within the scan budget."""
    size = os.path.getsize(path)
    if path.lower().endswith(".gz") or size > budget.scan_bytes:
        raise NotCheap
    budget.scan_bytes -= size
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_COUNT_CHUNK):
            if budget.cancelled.is_set():
                raise NotCheap
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")  # a last line without a newline is still a line


class JsonlTail:
    """A JSONL file followed like `tail -F`: complete lines appended later are read as they come.
    A file that shrank (truncated) or was replaced (rotated) is read again from its start."""

    def __init__(self, path: str, opts: ReadOptions) -> None:
        self.path = path
        self.opts = opts
        self.cursor = LineCursor()
        self.identity: tuple[int, int] | None = None
        self.failing = False  # a read error is reported once, not at every poll

    def initial(self) -> Iterator[Item]:
        return self.poll()

    def poll(self) -> Iterator[Item]:
        try:
            yield from self._new_lines()
            self.failing = False
        except FileNotFoundError:
            pass  # moved away mid-rotation: its successor is picked up when it appears
        except READ_ERRORS as error:
            if not self.failing:
                self.failing = True
                yield BadInput(self.path, f"cannot read: {describe_error(error)}")

    def _new_lines(self) -> Iterator[Item]:
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino)
            if self.identity not in (None, identity) or st.st_size < self.cursor.offset:
                self.cursor = LineCursor()
            self.identity = identity
            if st.st_size == self.cursor.offset:
                return
            f.seek(self.cursor.offset)
            yield from jsonl_items(f, self.path, self.cursor, self.opts, final=False)


JSONL = InputFormat("jsonl", (".jsonl", ".json", ".ndjson"), read_jsonl_file, count_lines, gzip=True, tail=JsonlTail)
