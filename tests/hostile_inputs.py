"""A directory of hostile inputs among good ones, as an attacker (or a broken crawler) leaves them:
gzip bombs named .warc.gz and .jsonl.gz, a WARC gzip-compressed as a whole, zero-length files, and a
gzip file with nothing in it; beside them a good WARC (gzip record by record) and a good JSONL file.
Used by tests/test_hostile_inputs.py and bench/hostile_inputs.py."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import orjson
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRAWL = Path(__file__).parent / "data" / "crawl"
GOOD_PAGES = ["python-flask-doc/views.html", "python3.11-doc/faq/general.html", "python-requests-doc/user/quickstart.html"]
WHOLE_GZIP_PAGES = ["python3.11-doc/faq/gui.html", "python3.11-doc/faq/installed.html", "python-flask-doc/server.html"]
DATE = "2024-03-01T12:00:00Z"
_CHUNK = 1 << 20


def gzip_bomb(path: Path, size: int, line: bytes = b"") -> None:
    """`size` bytes of zeros (after `line`), gzip-compressed (about 1000:1), written without
    ever holding them."""
    zeros = bytes(_CHUNK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        out.write(compressor.compress(line))
        for _ in range(size // _CHUNK):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())


def warc_bytes(pages: list[str], *, gzip_records: bool) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip_records)
    for page in pages:
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writer.create_warc_record(f"https://docs.example.org/{page}", "response",
                                           payload=io.BytesIO((CRAWL / page).read_bytes()), http_headers=http,
                                           warc_headers_dict={"WARC-Date": DATE})
        writer.write_record(record)
    return out.getvalue()


GOOD_ROWS = [f"Good document {i}: a paragraph of plain prose that is long enough to read, with a sentence "
             f"or two about topic number {i}, written for this test." for i in range(3)]


def make_hostile_directory(root: Path, bomb_bytes: int) -> dict[str, object]:
    """Fills `root`; returns what a reader must find: the good documents' URLs and texts, and the
    bad files (each must get one message)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a-good.warc.gz").write_bytes(warc_bytes(GOOD_PAGES, gzip_records=True))
    (root / "b-good.jsonl").write_bytes(b"".join(orjson.dumps({"text": text}) + b"\n" for text in GOOD_ROWS))
    gzip_bomb(root / "bomb.warc.gz", bomb_bytes)
    gzip_bomb(root / "bomb-record.warc.gz", bomb_bytes, b"WARC/1.0\r\nWARC-Type: resource\r\nWARC-Target-URI: ")
    gzip_bomb(root / "bomb.jsonl.gz", bomb_bytes)
    (root / "whole.warc.gz").write_bytes(gzip.compress(warc_bytes(WHOLE_GZIP_PAGES, gzip_records=False)))
    for name in ("empty.jsonl", "empty.warc.gz", "empty.jsonl.gz", "empty.warc"):
        (root / name).write_bytes(b"")
    (root / "hollow.jsonl.gz").write_bytes(gzip.compress(b""))
    (root / "z-good-last.jsonl").write_bytes(orjson.dumps({"text": GOOD_ROWS[0] + " The last file."}) + b"\n")
    bad = sorted(["bomb.warc.gz", "bomb-record.warc.gz", "bomb.jsonl.gz", "whole.warc.gz", "empty.jsonl",
                  "empty.warc.gz", "empty.jsonl.gz", "empty.warc", "hollow.jsonl.gz"])
    return {"urls": [f"https://docs.example.org/{page}" for page in GOOD_PAGES],
            "unsent_urls": [f"https://docs.example.org/{page}" for page in WHOLE_GZIP_PAGES],
            "texts": [*GOOD_ROWS, GOOD_ROWS[0] + " The last file."], "bad": bad}
