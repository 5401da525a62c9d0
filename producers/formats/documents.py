"""Files that are one document each: `.txt` and `.md` (UTF-8 text; a Markdown file's first `# heading`
is its title) and `.html`/`.htm` (the page's main content, producers.extract, decoded as the page
declares). Read bounded by a size limit: a file may be huge, or still growing."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from producers.formats.base import InputFormat, one_item
from producers.formats.jsonl import line_limit
from producers.items import (
    FeedItem,
    Item,
    ReadOptions,
    Rejected,
    attempt,
    decode_utf8,
    html_limit,
    item_from_page,
    item_from_text,
)

_BOM = b"\xef\xbb\xbf"
# A Markdown file's title: its first level-1 heading, if one starts its text (after front matter at most).
_MARKDOWN_TITLE = re.compile(r"\A(?:---\n.*?\n---\n)?\s*# +([^\n]+)", re.DOTALL)


def _file_limit(html: bool, opts: ReadOptions) -> int:
    return html_limit(opts) if html else line_limit(opts)


def _read_document(path: str, html: bool, opts: ReadOptions) -> FeedItem:
    """A .txt/.md file is one text; an .html/.htm file is its page's main content, decoded as
    the page declares (not necessarily UTF-8)."""
    limit = _file_limit(html, opts)
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # bounded: the file may be huge, or still growing
        if len(data) > limit:
            size = os.fstat(f.fileno()).st_size
            raise Rejected(f"document too large: file of {size} bytes > file limit {limit}")
    if html:
        if b"\x00" in data:
            raise Rejected("binary file (contains NUL bytes)")
        return item_from_page(data, path, opts)
    text = decode_utf8(data.removeprefix(_BOM))
    if "\x00" in text:
        raise Rejected("binary file (contains NUL bytes)")
    heading = _MARKDOWN_TITLE.search(text[:2000]) if path.endswith(".md") else None
    return item_from_text(text, path, {"title": heading.group(1).strip()} if heading else {}, opts)


def read_text_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    yield attempt(path, _read_document, path, False, opts)


def read_html_file(path: str, opts: ReadOptions) -> Iterator[Item]:
    yield attempt(path, _read_document, path, True, opts)


TEXT = InputFormat("text", (".txt", ".md"), read_text_file, one_item)
HTML = InputFormat("html", (".html", ".htm"), read_html_file, one_item)
