"""What the feed's readers yield, and the one way a text becomes an item.

Every input (a JSONL line, a Parquet row, a file) becomes a `FeedItem` or a `BadInput` naming
its location and reason. The checks raise `Rejected` with that reason and `attempt` turns it
into the BadInput, so no bad input makes a reader raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamer.text import normalise_text


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


class Rejected(Exception):
    """One input is bad; the message is the BadInput reason."""


def attempt(location: str, make: Callable[..., FeedItem], *args: Any) -> Item:
    """make(*args), or the BadInput at `location` if it rejects its input."""
    try:
        return make(*args)
    except Rejected as rejected:
        return BadInput(location, str(rejected))


def describe_error(error: BaseException) -> str:
    """A read error in a few words, for a BadInput reason."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _too_large(size: int, opts: ReadOptions) -> Rejected:
    return Rejected(f"document too large: {size} bytes > limit {opts.max_bytes}")


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def item_from_text(text: str, location: str, meta: dict[str, Any], opts: ReadOptions) -> FeedItem:
    """The one place a text becomes an item: size limit, normalisation, emptiness."""
    size = _utf8_size(text)
    if size > opts.max_bytes:  # before normalising, so a huge text is not run through NFKC
        raise _too_large(size, opts)
    text = normalise_text(text)
    if not text:
        raise Rejected("empty document")
    size = _utf8_size(text)
    if size > opts.max_bytes:  # NFKC expands a few characters (ligatures, fractions, ...)
        raise _too_large(size, opts)
    return FeedItem(text=text, location=location, meta=meta)


def item_from_row(row: dict[str, Any], location: str, opts: ReadOptions) -> FeedItem:
    if opts.text_field not in row:
        raise Rejected(f"missing text field {opts.text_field!r}")
    text = row[opts.text_field]
    if not isinstance(text, str):
        raise Rejected("text field is not a string")
    meta = {key: value for key, value in row.items() if key != opts.text_field}
    return item_from_text(text, location, meta, opts)
