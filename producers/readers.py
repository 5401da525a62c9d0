"""Input readers of the feeder: JSONL, Parquet, text/HTML directories and stdin.

Everything streams: JSONL line by line, Parquet by record batches, files one at a time, so a
corpus never has to fit in memory. Every problem with one input becomes a `BadInput` naming its
location (path:line, path:row or path) and the reading goes on; no input makes the readers raise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import itertools
import json
import os
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, BinaryIO, Callable, Iterator, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from producers.html_text import extract_main_text
from streamer.text import normalise_text

__all__ = ["BadInput", "FeedItem", "ReadOptions", "follow_paths", "normalise_text", "read_paths"]


@dataclass(frozen=True)
class FeedItem:
    text: str
    location: str  # "path:line" for JSONL/stdin ("<stdin>:line"), "path:row" for parquet, "path" for a file
    meta: dict[str, Any]  # other fields of the row, plus {"title": ...} from an HTML <title>


@dataclass(frozen=True)
class BadInput:
    location: str
    reason: str


@dataclass
class ReadOptions:
    text_field: str = "text"
    max_bytes: int = 1_000_000  # UTF-8 size of a text; larger -> BadInput
    encoding_errors: str = "strict"  # only strict is used; undecodable -> BadInput


Item = FeedItem | BadInput
Kind = Literal["jsonl", "parquet", "text", "html"]

STDIN = "-"
STDIN_LOCATION = "<stdin>"
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
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, pa.ArrowException)

class _Rejected(Exception):
    """One input is bad; the message is the BadInput reason."""


def _attempt(location: str, make: Callable[..., FeedItem], *args: Any) -> Item:
    try:
        return make(*args)
    except _Rejected as rejected:
        return BadInput(location, str(rejected))


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _too_large(size: int, opts: ReadOptions) -> _Rejected:
    return _Rejected(f"document too large: {size} bytes > limit {opts.max_bytes}")


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _from_text(text: str, location: str, meta: dict[str, Any], opts: ReadOptions) -> FeedItem:
    """The one place a text becomes an item: size limit, normalisation, emptiness."""
    size = _utf8_size(text)
    if size > opts.max_bytes:  # before normalising, so a huge text is not run through NFKC
        raise _too_large(size, opts)
    text = normalise_text(text)
    if not text:
        raise _Rejected("empty document")
    size = _utf8_size(text)
    if size > opts.max_bytes:  # NFKC expands a few characters (ligatures, fractions, ...)
        raise _too_large(size, opts)
    return FeedItem(text=text, location=location, meta=meta)


def _from_row(row: dict[str, Any], location: str, opts: ReadOptions) -> FeedItem:
    if opts.text_field not in row:
        raise _Rejected(f"missing text field {opts.text_field!r}")
    text = row[opts.text_field]
    if not isinstance(text, str):
        raise _Rejected("text field is not a string")
    meta = {key: value for key, value in row.items() if key != opts.text_field}
    return _from_text(text, location, meta, opts)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Rejected(f"not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _load_json(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as strict_error:
        # orjson is fast and strict (it also refuses NaN and lone surrogates, which could not be
        # sent on as JSON anyway); the standard parser words plain syntax errors better.
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            raise _Rejected(f"malformed JSON: {error.msg} (col {error.colno})") from None
        except RecursionError:
            pass
        raise _Rejected(f"malformed JSON: {strict_error.msg} (col {strict_error.colno})") from None


def _from_json_line(line: bytes, location: str, opts: ReadOptions) -> FeedItem:
    row = _load_json(_decode(line))
    if not isinstance(row, dict):
        raise _Rejected("JSON value is not an object")
    return _from_row(row, location, opts)


# ---------------------------------------------------------------------------------------------
# JSONL streams (files, gzip files, stdin, followed files)


def _line_limit(opts: ReadOptions) -> int:
    return _LINE_FACTOR * opts.max_bytes + _RAW_SLACK


@dataclass
class _LineCursor:
    """How far a JSONL stream has been consumed; lets a followed file resume where it was."""

    offset: int = 0  # bytes consumed: the start of the next unread line
    line_no: int = 0  # lines consumed
    overlong: int = 0  # bytes so far of an over-long line still being skipped (0: none)


def _strip_line(line: bytes, at_start: bool) -> bytes:
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    return line.removeprefix(_BOM) if at_start else line


def _raw_lines(f: BinaryIO, cur: _LineCursor, cap: int, final: bool) -> Iterator[tuple[int, bytes | int]]:
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


def _jsonl_items(f: BinaryIO, name: str, cur: _LineCursor, opts: ReadOptions, final: bool) -> Iterator[Item]:
    cap = _line_limit(opts)
    for line_no, line in _raw_lines(f, cur, cap, final):
        location = f"{name}:{line_no}"
        if isinstance(line, int):
            yield BadInput(location, f"document too large: line of {line} bytes > line limit {cap}")
        elif line.strip():  # blank lines are not bad input
            yield _attempt(location, _from_json_line, line, location, opts)


def _read_jsonl_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from _jsonl_items(f, path, _LineCursor(), opts, final=True)  # type: ignore[arg-type]


def _stdin() -> BinaryIO:
    if sys.stdin is None:
        raise OSError(0, "no standard input")
    return sys.stdin.buffer


def _read_stdin(opts: ReadOptions) -> Iterator[Item]:
    yield from _jsonl_items(_stdin(), STDIN_LOCATION, _LineCursor(), opts, final=True)


# ---------------------------------------------------------------------------------------------
# Parquet, text and HTML files


def _read_parquet(path: str, opts: ReadOptions) -> Iterator[Item]:
    with pq.ParquetFile(path) as parquet:
        if opts.text_field not in parquet.schema_arrow.names:
            yield BadInput(path, f"missing text field {opts.text_field!r}")
            return
        rows = itertools.count(1)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                location = f"{path}:{next(rows)}"
                yield _attempt(location, _from_row, row, location, opts)


def _file_limit(kind: Kind, opts: ReadOptions) -> int:
    return (_HTML_FACTOR if kind == "html" else _LINE_FACTOR) * opts.max_bytes + _RAW_SLACK


def _read_document(path: str, kind: Kind, opts: ReadOptions) -> FeedItem:
    """A .txt/.md file is one text; an .html/.htm file is its page's main text."""
    limit = _file_limit(kind, opts)
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # bounded: the file may be huge, or still growing
        if len(data) > limit:
            size = os.fstat(f.fileno()).st_size
            raise _Rejected(f"document too large: file of {size} bytes > file limit {limit}")
    text = _decode(data.removeprefix(_BOM))
    if "\x00" in text:
        raise _Rejected("binary file (contains NUL bytes)")
    meta: dict[str, Any] = {}
    if kind == "html":
        try:
            text, title = extract_main_text(text)
        except AssertionError as error:  # html.parser's way of giving up on malformed markup
            raise _Rejected(f"cannot parse HTML: {error}") from None
        if title:
            meta["title"] = title
    return _from_text(text, path, meta, opts)


def _read_file(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    if kind == "jsonl":
        items = _read_jsonl_file(path, opts)
    elif kind == "parquet":
        items = _read_parquet(path, opts)
    else:
        items = _document_items(path, kind, opts)
    yield from _guarded(path, items)


def _document_items(path: str, kind: Kind, opts: ReadOptions) -> Iterator[Item]:
    yield _attempt(path, _read_document, path, kind, opts)


def _guarded(location: str, items: Iterator[Item]) -> Iterator[Item]:
    """I/O and format errors end that input with one BadInput instead of an exception."""
    try:
        yield from items
    except _READ_ERRORS as error:
        yield BadInput(location, f"cannot read: {_describe(error)}")


# ---------------------------------------------------------------------------------------------
# Paths


def _kind(path: str) -> Kind | None:
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):  # only JSONL is read compressed
        return "jsonl" if _SUFFIX_KINDS.get(os.path.splitext(name[:-3])[1]) == "jsonl" else None
    return _SUFFIX_KINDS.get(os.path.splitext(name)[1])


def _walk(root: str) -> Iterator[tuple[str, Kind]]:
    """Supported files under root in sorted order (deterministic runs). Other files are skipped
    silently, and so are hidden ones (.git, editors' and downloaders' temporaries)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            kind = _kind(name)
            if kind is not None and not name.startswith("."):
                yield os.path.join(dirpath, name), kind


def _read_path(path: str, opts: ReadOptions) -> Iterator[Item]:
    if path == STDIN:
        yield from _guarded(STDIN_LOCATION, _read_stdin(opts))
    elif os.path.isdir(path):
        for file, kind in _walk(path):
            yield from _read_file(file, kind, opts)
    elif not os.path.exists(path):
        yield BadInput(path, "no such file or directory")
    elif (kind := _kind(path)) is None:
        yield BadInput(path, "unsupported file type")
    else:
        yield from _read_file(path, kind, opts)


def read_paths(paths: list[str], opts: ReadOptions) -> Iterator[FeedItem | BadInput]:
    """Every item of every path, in order, streaming; problems are yielded as BadInput."""
    for path in paths:
        yield from _read_path(path, opts)


# ---------------------------------------------------------------------------------------------
# Following: directories for new files, JSONL files for appended lines

_BATCH_ITEMS = 256
_BATCH_CHARS = 8_000_000


def _take(items: Iterator[Item]) -> list[Item]:
    """The next batch of items, bounded by count and text size so that it stays small."""
    batch: list[Item] = []
    chars = 0
    for item in items:  # breaking out does not close the generator: the next call resumes it
        batch.append(item)
        chars += len(item.text) if isinstance(item, FeedItem) else 0
        if len(batch) >= _BATCH_ITEMS or chars >= _BATCH_CHARS:
            break
    return batch


async def _in_thread(items: Iterator[Item], stop: asyncio.Event) -> AsyncIterator[Item]:
    """Runs a blocking reader in a worker thread a batch at a time, so the event loop stays free."""
    while not stop.is_set() and (batch := await asyncio.to_thread(_take, items)):
        for item in batch:
            yield item


async def _stdin_in_thread(opts: ReadOptions, stop: asyncio.Event) -> AsyncIterator[Item]:
    """stdin is read by a daemon thread rather than the default executor: a read blocked on an
    idle terminal or pipe must not keep the process from exiting once the feed is stopped."""
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue[list[Item]] = asyncio.Queue(maxsize=2)  # back-pressure on the reader

    def put(batch: list[Item]) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(batches.put(batch), loop).result()
            return True
        except (RuntimeError, concurrent.futures.CancelledError):  # the loop has gone away
            return False

    def pump() -> None:
        items = _read_path(STDIN, opts)
        try:
            while (batch := _take(items)) and put(batch):
                pass
        finally:
            put([])  # end of input

    threading.Thread(target=pump, name="synthstream-stdin", daemon=True).start()
    while not stop.is_set() and (batch := await batches.get()):
        for item in batch:
            yield item


class _DirWatcher:
    """A directory followed for new files. Each file is read once: at start if present, else
    once its size and mtime are the same at two polls in a row (a writer may still be filling
    it). Files changed after being read are not read again."""

    def __init__(self, root: str, opts: ReadOptions) -> None:
        self.root = root
        self.opts = opts
        self.seen: set[str] = set()
        self.pending: dict[str, tuple[int, int]] = {}  # new file -> (size, mtime) at last poll

    def initial(self) -> Iterator[Item]:
        for path, kind in _walk(self.root):
            self.seen.add(path)
            yield from _read_file(path, kind, self.opts)

    def poll(self) -> Iterator[Item]:
        present: set[str] = set()
        for path, kind in _walk(self.root):
            present.add(path)
            if path not in self.seen and self._settled(path):
                self.seen.add(path)
                yield from _read_file(path, kind, self.opts)
        for gone in self.pending.keys() - present:
            del self.pending[gone]

    def _settled(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:  # vanished between the walk and now
            return False
        signature = (st.st_size, st.st_mtime_ns)
        if self.pending.get(path) == signature:
            del self.pending[path]
            return True
        self.pending[path] = signature
        return False


class _JsonlTail:
    """A JSONL file followed like `tail -F`: complete lines appended later are read as they come.
    A file that shrank (truncated) or was replaced (rotated) is read again from its start."""

    def __init__(self, path: str, opts: ReadOptions) -> None:
        self.path = path
        self.opts = opts
        self.cursor = _LineCursor()
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
        except _READ_ERRORS as error:
            if not self.failing:
                self.failing = True
                yield BadInput(self.path, f"cannot read: {_describe(error)}")

    def _new_lines(self) -> Iterator[Item]:
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino)
            if self.identity not in (None, identity) or st.st_size < self.cursor.offset:
                self.cursor = _LineCursor()
            self.identity = identity
            if st.st_size == self.cursor.offset:
                return
            f.seek(self.cursor.offset)
            yield from _jsonl_items(f, self.path, self.cursor, self.opts, final=False)


_Watcher = _DirWatcher | _JsonlTail


def _watcher(path: str, opts: ReadOptions) -> _Watcher | None:
    if os.path.isdir(path):
        return _DirWatcher(path, opts)
    if os.path.isfile(path) and _kind(path) == "jsonl" and not path.lower().endswith(".gz"):
        return _JsonlTail(path, opts)
    return None  # read once: stdin, gzip, Parquet, text and HTML files, missing paths


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    return stop.is_set()


async def follow_paths(paths: list[str], opts: ReadOptions, poll_interval: float = 1.0,
                       stop: asyncio.Event | None = None) -> AsyncIterator[FeedItem | BadInput]:
    """Everything present now (as read_paths), then what appears later, until `stop` is set:
    new files in followed directories and lines appended to followed JSONL files. Ends by
    itself only if nothing given can be followed."""
    stop = stop or asyncio.Event()
    watchers: list[_Watcher] = []
    for path in paths:
        if path == STDIN:
            items = _stdin_in_thread(opts, stop)
        elif (watcher := _watcher(path, opts)) is not None:
            watchers.append(watcher)
            items = _in_thread(watcher.initial(), stop)
        else:
            items = _in_thread(_read_path(path, opts), stop)
        async for item in items:
            yield item
        if stop.is_set():
            return
    while watchers and not await _stopped_within(stop, poll_interval):
        for watcher in watchers:
            async for item in _in_thread(watcher.poll(), stop):
                yield item
