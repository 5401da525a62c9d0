"""The input formats the feeder reads, each registered once, in its own module, with everything the
feeder needs of it (`InputFormat`): the suffixes a file of it is known by (and whether a .gz of it is
read), how a file of it becomes items, how its items are counted cheaply for the feed's ETA, and how
it is followed as it grows (`feed --follow`), if it can be:

- `jsonl`: JSON lines (plain or gzip), streamed line by line; counted by newlines; followed like `tail -F`;
- `parquet`: rows by record batches; counted from the footer;
- `documents`: .txt/.md/.html files, one document each (an HTML page's main content: producers.extract);
- `webarchive`: WARC/WET/ARC (plain or gzip), record by record (warcio).

A new format is a module defining its `InputFormat` and a line in `FORMATS`. Everything streams, and
read and format errors end an input with one BadInput (`guarded`) instead of an exception.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from producers.formats.base import READ_ERRORS, CountBudget, InputFormat, NotCheap, Tail, guarded
from producers.formats.documents import HTML, TEXT
from producers.formats.jsonl import JSONL, LineCursor, jsonl_items, read_jsonl
from producers.formats.parquet import PARQUET
from producers.formats.webarchive import MAGIC as WARC_MAGIC
from producers.formats.webarchive import WEB_ARCHIVE, read_warc
from producers.items import BadInput, Item, ReadOptions

__all__ = ["FORMATS", "READ_ERRORS", "CountBudget", "InputFormat", "LineCursor", "NotCheap", "Tail", "format_of",
           "guarded", "jsonl_items", "read_file", "read_stream"]

FORMATS: tuple[InputFormat, ...] = (JSONL, PARQUET, TEXT, HTML, WEB_ARCHIVE)
_BY_SUFFIX = {suffix: fmt for fmt in FORMATS for suffix in fmt.suffixes}
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 4096  # of a gzip stream: enough to decompress the first few bytes of its first member


def format_of(path: str) -> InputFormat | None:
    """The format of a file by its name, or None if it is not one the feeder reads."""
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        fmt = _BY_SUFFIX.get(os.path.splitext(name[:-3])[1])
        return fmt if fmt is not None and fmt.gzip else None
    return _BY_SUFFIX.get(os.path.splitext(name)[1])


def read_file(path: str, fmt: InputFormat, opts: ReadOptions) -> Iterator[Item]:
    """Every item of one file; problems (read errors included) are BadInput, and so is a file with
    nothing in it (empty, or nothing once decompressed): it says so."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False  # the reader reports why it cannot read it
    if empty:
        yield BadInput(path, "empty file: nothing to read")
        return
    found = False
    for item in guarded(path, fmt.read(path, opts)):
        found = True
        yield item
    if not found:
        yield BadInput(path, "nothing to read in it (empty once decompressed, or blank lines only)")


def count_file(path: str, budget: CountBudget) -> int:
    """Items of one file, cheaply, or NotCheap; a file the reader will report as bad counts one."""
    fmt = format_of(path)
    if fmt is None:
        return 1
    try:
        return fmt.count(path, budget)
    except OSError:
        return 1  # the reader reports it as one bad input


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
