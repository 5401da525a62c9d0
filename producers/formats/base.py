"""What registering an input format means (`InputFormat`), and what every reader shares."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from producers.items import BadInput, Item, ReadOptions, describe_error

READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, pa.ArrowException)
JSONL_SCAN_BUDGET = 1 << 30  # bytes of JSONL scanned at most to count lines; beyond that counting is not cheap


class NotCheap(Exception):
    """Counting an input's items would mean reading it through (gzip, web archives, stdin)."""


@dataclass
class CountBudget:
    """What counting may still cost, shared by all the inputs of one feed."""

    scan_bytes: int = JSONL_SCAN_BUDGET
    cancelled: threading.Event = field(default_factory=threading.Event)


class Tail(Protocol):
    """A file followed as it grows (`feed --follow`): what is there now, then what is appended."""

    def initial(self) -> Iterator[Item]: ...

    def poll(self) -> Iterator[Item]: ...


@dataclass(frozen=True)
class InputFormat:
    """Everything the feeder needs of one input format, in one place."""

    name: str
    suffixes: tuple[str, ...]  # ".jsonl", ...: how a file of it is known
    read: Callable[[str, ReadOptions], Iterator[Item]]  # every item of a file of it
    count: Callable[[str, CountBudget], int]  # its items, cheaply (for the feed's ETA), or NotCheap
    gzip: bool = False  # a .gz of it is read too (name.jsonl.gz)
    # a file of it followed as it grows (`feed --follow`); None: read once
    tail: Callable[[str, ReadOptions], Tail] | None = None

    def follows(self, path: str) -> bool:
        return self.tail is not None and not path.lower().endswith(".gz")


def one_item(path: str, budget: CountBudget) -> int:
    """The count of a format whose file is one item."""
    return 1


def not_cheap(path: str, budget: CountBudget) -> int:
    raise NotCheap


def guarded(location: str, items: Iterator[Item]) -> Iterator[Item]:
    """I/O and format errors end that input with one BadInput instead of an exception."""
    try:
        yield from items
    except READ_ERRORS as error:
        yield BadInput(location, f"cannot read: {describe_error(error)}")
