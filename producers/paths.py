"""The inputs the feeder is given, read once: files, directories (walked for the files it
reads) and "-" for stdin (JSON lines, or a WARC/ARC stream). `read_paths` yields their items in order."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

from producers.formats import Kind, file_kind, guarded, read_file, read_stream
from producers.items import BadInput, Item, ReadOptions

STDIN = "-"  # the path that means standard input
STDIN_LOCATION = "<stdin>"


def supported_files(root: str) -> Iterator[tuple[str, Kind]]:
    """Supported files under root in sorted order (deterministic runs). Other files are skipped
    silently, and so are hidden ones (.git, editors' and downloaders' temporaries)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            kind = file_kind(name)
            if kind is not None and not name.startswith("."):
                yield os.path.join(dirpath, name), kind


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
        for file, kind in supported_files(path):
            yield from read_file(file, kind, opts)
    elif not os.path.exists(path):
        yield BadInput(path, "no such file or directory")
    elif (kind := file_kind(path)) is None:
        yield BadInput(path, "unsupported file type")
    else:
        yield from read_file(path, kind, opts)


def read_paths(paths: list[str], opts: ReadOptions) -> Iterator[Item]:
    """Every item of every path, in order, streaming; problems are yielded as BadInput, inputs
    that are not documents (web-archive requests, 404s, images) as Skipped."""
    for path in paths:
        yield from read_path(path, opts)
