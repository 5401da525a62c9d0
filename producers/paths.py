"""The inputs the feeder is given, read once: files, directories (walked for the files it
reads) and "-" for stdin (JSON lines, or a WARC/ARC stream). `read_paths` yields their items in
order; `count_items` says how many there will be, when each format can tell cheaply."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

from producers.formats import CountBudget, InputFormat, NotCheap, count_file, format_of, guarded, read_file, read_stream
from producers.items import BadInput, Item, ReadOptions

STDIN = "-"  # the path that means standard input
STDIN_LOCATION = "<stdin>"


def supported_files(root: str) -> Iterator[tuple[str, InputFormat]]:
    """Supported files under root in sorted order (deterministic runs). Other files are skipped
    silently, and so are hidden ones (.git, editors' and downloaders' temporaries)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            fmt = format_of(name)
            if fmt is not None and not name.startswith("."):
                yield os.path.join(dirpath, name), fmt


def _stdin() -> BinaryIO:
    if sys.stdin is None:
        raise OSError(0, "no standard input")
    return sys.stdin.buffer


def _read_stdin(opts: ReadOptions) -> Iterator[Item]:
    yield from read_stream(_stdin(), STDIN_LOCATION, opts)


def read_path(path: str, opts: ReadOptions) -> Iterator[Item]:
    """Every item of one input path (a file, a directory or STDIN); problems are BadInput."""
    if path == STDIN:
        yield from guarded(STDIN_LOCATION, _read_stdin(opts))
    elif os.path.isdir(path):
        for file, fmt in supported_files(path):
            yield from read_file(file, fmt, opts)
    elif not os.path.exists(path):
        yield BadInput(path, "no such file or directory")
    elif (fmt := format_of(path)) is None:
        yield BadInput(path, "unsupported file type")
    else:
        yield from read_file(path, fmt, opts)


def read_paths(paths: list[str], opts: ReadOptions) -> Iterator[Item]:
    """Every item of every path, in order, streaming; problems are yielded as BadInput, inputs
    that are not documents (web-archive requests, 404s, images) as Skipped."""
    for path in paths:
        yield from read_path(path, opts)


def count_items(paths: list[str], cancelled: threading.Event | None = None) -> int | None:
    """Items (approximately: blank JSONL lines count too) the readers will yield for `paths`, or
    None when a format cannot tell cheaply (stdin, gzip files, web archives): the feed's progress
    then shows a rate without an ETA."""
    budget = CountBudget(cancelled=cancelled or threading.Event())
    try:
        return sum(_count_path(path, budget) for path in paths)
    except NotCheap:
        return None


def _count_path(path: str, budget: CountBudget) -> int:
    if path == STDIN:
        raise NotCheap
    if os.path.isdir(path):
        return sum(count_file(file, budget) for file, _ in supported_files(path))
    return count_file(path, budget)
