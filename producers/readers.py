"""Input readers of the feeder: JSONL, Parquet, text/HTML pages, WARC/ARC/WET archives, directories, stdin.

Everything streams: JSONL line by line, Parquet by record batches, files one at a time, so a
corpus never has to fit in memory. Every problem with one input becomes a `BadInput` naming its
location (path:line, path:row or path) and the reading goes on; no input makes the readers raise.

This module is their public face; the work is split by job:
- `producers.items`: FeedItem, BadInput, Skipped (an archive record that is no document, with
  why), ReadOptions and the checks every text goes through;
- `producers.formats`: the formats, each registered once in its own module (suffixes, reader,
  cheap count, tail for --follow): JSON lines, Parquet, .txt/.md/.html documents, web archives;
- `producers.extract`: a page's main content (`producers.markdown` for a page that names it,
  trafilatura otherwise; `html_text` as the counted fallback);
- `producers.paths`: the inputs given (files, directories, stdin), read once: `read_paths`, and
  counted ahead when cheap: `count_items`;
- `producers.follow`: the same inputs followed as they grow: `follow_paths`.
"""

from __future__ import annotations

from producers.follow import follow_paths
from producers.items import BadInput, FeedItem, ReadOptions
from producers.paths import STDIN, read_paths
from streamer.text import normalise_text

__all__ = ["STDIN", "BadInput", "FeedItem", "ReadOptions", "follow_paths", "normalise_text", "read_paths"]
