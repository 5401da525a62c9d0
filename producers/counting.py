"""How many items a finite feed input holds, when that is cheap to learn: a total for the
feed's progress (ETA). Lines of plain JSONL are counted by scanning bytes (up to a budget),
Parquet row counts come from the file footer, a text/HTML file is one item. stdin, gzip files
and web archives have no cheap count, so their feed shows a rate without an ETA."""

from __future__ import annotations

import os
import threading

import pyarrow.parquet as pq

from producers.formats import file_kind
from producers.paths import STDIN, supported_files

JSONL_SCAN_BUDGET = 1 << 30  # bytes of JSONL scanned at most; beyond that counting is not cheap
_CHUNK = 1 << 20


class _NotCheap(Exception):
    pass


def count_items(paths: list[str], cancelled: threading.Event | None = None) -> int | None:
    """Items (approximately: blank lines count too) the readers will yield for `paths`, or None."""
    cancelled = cancelled or threading.Event()
    budget = [JSONL_SCAN_BUDGET]
    try:
        return sum(_count_path(path, budget, cancelled) for path in paths)
    except _NotCheap:
        return None


def _count_path(path: str, budget: list[int], cancelled: threading.Event) -> int:
    if path == STDIN:
        raise _NotCheap
    if os.path.isdir(path):
        return sum(_count_file(file, budget, cancelled) for file, _ in supported_files(path))
    return _count_file(path, budget, cancelled)


def _count_file(path: str, budget: list[int], cancelled: threading.Event) -> int:
    kind = file_kind(path)
    if kind == "warc":  # records are only known by reading the archive through
        raise _NotCheap
    try:
        if kind == "parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if kind == "jsonl":
            return _count_lines(path, budget, cancelled)
    except OSError:
        pass  # the reader reports it as one bad input
    return 1  # a text/HTML file, or a path the reader reports as one bad input


def _count_lines(path: str, budget: list[int], cancelled: threading.Event) -> int:
    size = os.path.getsize(path)
    if path.lower().endswith(".gz") or size > budget[0]:
        raise _NotCheap
    budget[0] -= size
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if cancelled.is_set():
                raise _NotCheap
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")  # a last line without a newline is still a line
