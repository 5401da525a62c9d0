"""What the feed's readers yield, and the one way a text becomes an item.

Every input (a JSONL line, a Parquet row, a file, a web-archive record) becomes a `FeedItem`, a
`BadInput` naming its location and reason, or a `Skipped` (an input that is fine but is not a
document: a WARC request record, a 404 page, an image). The checks raise `Rejected` with the
reason and `attempt` turns it into the BadInput, so no bad input makes a reader raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from producers.extract import extract
from streamer.text import normalise_text

# Raw inputs are allowed to be bigger than the text they carry (JSON escapes such as \uXXXX
# triple non-ASCII text, rows have other fields, HTML has markup); beyond these multiples of
# max_bytes they are rejected before being parsed at all.
RAW_SLACK = 65_536
LINE_FACTOR = 4
HTML_FACTOR = 16


Extraction = Literal["main", "fallback"]  # how an HTML page's text was found (producers.extract)


@dataclass(frozen=True)
class FeedItem:
    text: str
    # "path:line" for JSONL/stdin ("<stdin>:line"), "path:row" for parquet, "path" for a file,
    # "path@offset" for a web-archive record
    location: str
    meta: dict[str, Any]  # other fields of the row; for a page: title, url, date, language
    extraction: Extraction | None = None  # None: not HTML
    # What the record names as its source when that is not the location: a page's (or a web-archive
    # record's) URL. A row keeps its file and line, and its own `url` field stays in meta.
    url: str | None = None

    @property
    def source(self) -> str:
        return self.url or self.location


@dataclass(frozen=True)
class BadInput:
    location: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """An input that is not a document and is counted, not reported: the reason is a short,
    stable phrase ("request record", "status 404", "not HTML (image/png)") to count by."""

    location: str
    reason: str


@dataclass
class ReadOptions:
    text_field: str = "text"
    max_bytes: int = 1_000_000  # UTF-8 size of a text; larger -> BadInput
    max_record_bytes: int = 64 << 20  # decompressed bytes of one web-archive record; more -> BadInput, file ends
    max_file_bytes: int = 16 << 30  # decompressed bytes of one compressed file; more -> BadInput, file ends
    encoding_errors: str = "strict"  # only strict is used; undecodable -> BadInput


Item = FeedItem | BadInput | Skipped


class Rejected(Exception):
    """One input is bad; the message is the BadInput reason."""


class OverCap(Exception):
    """A file decompresses to more than a cap allows (a gzip bomb, say): its reading ends; the
    message is the BadInput reason."""


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


def html_limit(opts: ReadOptions) -> int:
    """Bytes of HTML read at most for one page; a bigger page is rejected unparsed."""
    return HTML_FACTOR * opts.max_bytes + RAW_SLACK


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _too_large(size: int, opts: ReadOptions) -> Rejected:
    return Rejected(f"document too large: {size} bytes > limit {opts.max_bytes}")


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def item_from_text(text: str, location: str, meta: dict[str, Any], opts: ReadOptions,
                   extraction: Extraction | None = None, url: str | None = None) -> FeedItem:
    """The one place a text becomes an item: size limit, normalisation, emptiness. Indentation
    and fenced code blocks are kept as written; record ids do not depend on them
    (streamer.records.content_id)."""
    size = _utf8_size(text)
    if size > opts.max_bytes:  # before normalising, so a huge text is not run through NFC
        raise _too_large(size, opts)
    text = normalise_text(text, keep_indent=True)
    if not text:
        raise Rejected("empty document")
    size = _utf8_size(text)
    if size > opts.max_bytes:  # NFC composes, but a few characters expand
        raise _too_large(size, opts)
    return FeedItem(text=text, location=location, meta=meta, extraction=extraction, url=url)


def item_from_row(row: dict[str, Any], location: str, opts: ReadOptions) -> FeedItem:
    if opts.text_field not in row:
        raise Rejected(f"missing text field {opts.text_field!r}")
    text = row[opts.text_field]
    if not isinstance(text, str):
        raise Rejected("text field is not a string")
    meta = {key: value for key, value in row.items() if key != opts.text_field}
    return item_from_text(text, location, meta, opts)


def item_from_page(html: str | bytes, location: str, opts: ReadOptions, url: str | None = None,
                   fetched: str | None = None) -> FeedItem:
    """An HTML page's main content as an item; meta: the page's title, url (`url` if given),
    date and language. `fetched` (a crawl's WARC-Date) becomes the date, and a date the page
    declares itself is kept as `published`."""
    page = extract(html, url)
    if page is None:
        raise Rejected("empty document")
    meta: dict[str, Any] = page.meta()
    if fetched:
        if "date" in meta:
            meta["published"] = meta["date"]
        meta["date"] = fetched
    return item_from_text(page.text, location, meta, opts, extraction="fallback" if page.fallback else "main",
                          url=meta.get("url"))
