"""Web archives as feed items: WARC files (WET ones too: crawl.warc.wet.gz) and ARC files,
gzip-compressed or not, read record by record with warcio (from a file or any binary stream, never
whole). Their records are only known by reading them through, so they are not counted ahead.

- `response` (and `resource`) records of HTML with HTTP status 200: the page's main content
  (producers.extract); meta url = WARC-Target-URI, date = WARC-Date (ARC: its URL and archive date;
  a date the page itself declares is kept as `published`).
- `conversion` records (WET files): their text as it is.
- Everything else is `Skipped` with a reason to count by: other record types ("request record",
  "warcinfo record"), other statuses ("redirect 301", "status 404"), other content ("not HTML
  (image/png)").
- A record cut short (the file truncated mid-record) or bytes that are no record are a BadInput at
  "path@offset", the offset of the record in the (compressed) file; the rest of the file is not
  trusted after data that is no record, but nothing raises. A .gz web archive must be compressed
  record by record (as crawlers write them); one compressed whole is reported as such before any
  of its records is sent (each record's item is held until the next one is read).
- What warcio decompresses is capped as it reads (`max_record_bytes` per record, `max_file_bytes`
  per file): a gzip bomb costs a few MiB and one BadInput at its record's offset.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import BufferedReader
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeadersParserException
from warcio.timeutils import timestamp_to_iso_date

from producers.formats.base import InputFormat, not_cheap
from producers.items import (
    BadInput,
    FeedItem,
    Item,
    OverCap,
    ReadOptions,
    Rejected,
    Skipped,
    attempt,
    decode_utf8,
    html_limit,
    item_from_page,
    item_from_text,
)

MAGIC = (b"WARC/", b"filedesc://")  # how a WARC file and an ARC file start
_PAGE_RECORDS = frozenset({"response", "resource"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_CORRUPT_ERRORS = (ArchiveLoadFailed, StatusAndHeadersParserException, zlib.error)


class _CountingReader:
    """A stream that says how many bytes were read from it: where the last whole record ended
    is compared with it to find a cut-short tail, on pipes as on files."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed += len(data)
        return data

    def tell(self) -> int:
        return self.consumed


def read_warc_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    with open(path, "rb") as f:
        yield from read_warc(f, path, opts)


class _Meter:
    """Caps what warcio decompresses, checked as it reads (each fill of its buffer decompresses
    one 16 KiB block, so at most some MiB pass a cap): a record, from where it starts, and the
    whole file. Installed on the iterator's own reader, the one that undoes gzip."""

    def __init__(self, records: ArchiveIterator, opts: ReadOptions) -> None:
        self.reader = records.reader
        self.opts = opts
        self.record_start = 0
        process = self.reader._process_read

        def process_read(data: bytes) -> None:
            process(data)
            self.check()

        self.reader._process_read = process_read  # type: ignore[method-assign]

    def next_record(self) -> None:
        self.record_start = self.reader.num_read

    def check(self) -> None:
        read = self.reader.num_read
        if read - self.record_start > self.opts.max_record_bytes:
            raise OverCap(f"record decompresses to more than {self.opts.max_record_bytes} bytes "
                          f"(feed.max_record_bytes): skipped with the rest of the file")
        if read > self.opts.max_file_bytes:
            raise OverCap(f"file decompresses to more than {self.opts.max_file_bytes} bytes (feed.max_file_bytes): "
                          f"the rest of it is skipped")


_WHOLE_GZIP = ("gzip-compressed as a whole, not record by record: nothing of it was sent; decompress it (or "
               "run `warcio recompress` on it) and feed it again")


def read_warc(stream: BinaryIO, name: str, opts: ReadOptions) -> Iterator[Item]:
    """Items of every record of a WARC/ARC stream, located as name@offset.

    Each record's item is held back until the next record has been read: a file gzip-compressed
    as a whole shows as such only there, and then nothing of it is sent."""
    counted = _CountingReader(stream)
    # Without arc2warc the format found first is kept, so bytes after WARC records that happen to
    # look like an ARC header line are not taken for a record.
    records = ArchiveIterator(counted, arc2warc=False)
    meter = _Meter(records, opts)
    held: Item | None = None
    sent = False
    try:
        for record in records:
            location = f"{name}@{records.offset}"  # where this record starts
            item = _record_item(record, location, opts)
            records.read_to_end()  # streams through what was not read, e.g. a skipped image
            if held is not None:
                sent = True
                yield held
            held = _cut_short(record, location) or item
            meter.next_record()
    except _CORRUPT_ERRORS as error:
        if "non-chunked gzip" in str(error):  # its first record is held: drop it
            yield BadInput(name, _WHOLE_GZIP if not sent else _WHOLE_GZIP.replace(
                "nothing of it was sent", f"its records before offset {records.offset} were sent"))
            return
        if held is not None:
            yield held
        yield BadInput(f"{name}@{records.offset}", f"not a whole WARC/ARC record: {_first_line(error)}")
        return
    except OverCap as over:
        if held is not None:
            yield held
        yield BadInput(f"{name}@{records.offset}", str(over))
        return
    if held is not None:
        yield held
    if counted.consumed > records.offset:  # warcio ends quietly at a record whose headers are cut
        yield BadInput(f"{name}@{records.offset}",
                       f"record cut short: the last {counted.consumed - records.offset} bytes are not a whole record")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:120] if text else type(error).__name__


def _cut_short(record: ArcWarcRecord, location: str) -> BadInput | None:
    """A BadInput if the stream ended before the record's declared length (read to its end)."""
    missing = getattr(record.raw_stream, "limit", None)
    if missing is None or not record.rec_type:
        return BadInput(location, "record cut short: incomplete record headers")
    if missing > 0:
        return BadInput(location, f"record cut short: {missing} of its {record.length} bytes missing")
    return None


def _record_item(record: ArcWarcRecord, location: str, opts: ReadOptions) -> Item:
    if record.rec_type == "conversion":
        return attempt(location, _converted_text, record, location, opts)
    if record.rec_type not in _PAGE_RECORDS:
        return Skipped(location, f"{record.rec_type or 'unknown'} record")
    reason = _why_not_a_page(record)
    if reason:
        return Skipped(location, reason)
    return attempt(location, _page, record, location, opts)


def _why_not_a_page(record: ArcWarcRecord) -> str | None:
    """Why a response/resource record is not an HTML page to feed, or None if it is one."""
    headers = record.http_headers
    if headers is not None:
        status = headers.get_statuscode()
        if status.startswith("3"):
            return f"redirect {status}"
        if status != "200":
            return f"status {status or 'missing'}"
    content_type = headers.get_header("Content-Type") if headers is not None else record.content_type
    mime = _mime(content_type)
    return None if mime in _HTML_TYPES else f"not HTML ({mime or 'no content type'})"


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _charset(content_type: str | None) -> str | None:
    for parameter in (content_type or "").split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def _payload(record: ArcWarcRecord, limit: int) -> bytes:
    """The record's payload (transfer and content encodings undone), at most `limit` bytes."""
    data = record.content_stream().read(limit + 1)
    if len(data) > limit:
        raise Rejected(f"document too large: payload over {limit} bytes")
    return data


def _page(record: ArcWarcRecord, location: str, opts: ReadOptions) -> FeedItem:
    headers = record.http_headers
    encoding = (headers.get_header("Content-Encoding") or "identity").lower() if headers is not None else "identity"
    if encoding != "identity" and encoding not in BufferedReader.get_supported_decompressors():
        raise Rejected(f"content encoding {encoding!r} cannot be decoded")  # e.g. br without brotli installed
    data = _payload(record, html_limit(opts))
    charset = _charset(headers.get_header("Content-Type") if headers is not None else record.content_type)
    html: str | bytes = data
    if charset:  # the server's word on the encoding; otherwise the page's own, or a guess
        try:
            html = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return item_from_page(html, location, opts, url=_target_uri(record), fetched=_fetched(record))


def _converted_text(record: ArcWarcRecord, location: str, opts: ReadOptions) -> FeedItem:
    """A WET conversion record: text already extracted by the crawler (UTF-8)."""
    text = decode_utf8(_payload(record, opts.max_bytes))
    url = _target_uri(record)
    meta = {key: value for key, value in (("url", url), ("date", _fetched(record))) if value}
    return item_from_text(text, location, meta, opts, url=url)


def _target_uri(record: ArcWarcRecord) -> str | None:
    return record.rec_headers.get_header("WARC-Target-URI") or record.rec_headers.get_header("uri")


def _fetched(record: ArcWarcRecord) -> str | None:
    """When the record was captured, as ISO 8601 (an ARC's 14-digit timestamp converted)."""
    if record.format == "arc":
        stamp = record.rec_headers.get_header("archive-date")
        return timestamp_to_iso_date(stamp) if stamp else None
    return record.rec_headers.get_header("WARC-Date")


WEB_ARCHIVE = InputFormat("web archive", (".warc", ".arc", ".wet"), read_warc_file, not_cheap, gzip=True)
