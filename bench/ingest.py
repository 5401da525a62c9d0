"""Ingestion: what the feeder's page path costs beside trafilatura alone.

On the real HTML pages of tests/data/crawl/ (three Debian-packaged Sphinx manuals, a DocBook one and
a Texinfo one), repeated `--passes` times, on one core (one thread, CPU seconds of this process):
  trafilatura alone   `trafilatura.extract(html, output_format="markdown")` per page
  synthstream         the feeder's own path per page: `producers.items.item_from_page` (extraction
                      with code blocks kept, title/URL/date/language, normalisation, size checks)
                      then `producers.filters.DocumentFilters.check` (every rule, default settings)
                      and the MinHash of the kept ones (`producers.near_duplicates.minhash`, the
                      signature the near-duplicate index looks up and stores)
and prints pages/s of each and their ratio (target >= 0.7). The Sphinx pages name their main content
(`role="main"`), which the feeder writes out itself (producers.markdown); the DocBook and Texinfo
pages do not, and go the generic route (trafilatura judges the content, producers.main_element
finds its element, producers.markdown writes it). All pages with that mark taken out go the
generic route, and their ratio is printed too (same target).

    python bench/ingest.py [--passes 5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trafilatura  # noqa: E402

from producers.filters import DocumentFilters  # noqa: E402
from producers.items import FeedItem, ReadOptions, item_from_page  # noqa: E402
from producers.near_duplicates import minhash  # noqa: E402
from streamer.config import FiltersSettings  # noqa: E402

CRAWL = Path(__file__).resolve().parents[1] / "tests" / "data" / "crawl"
RATIO_TARGET = 0.7


def pages() -> list[tuple[str, bytes]]:
    found = sorted(CRAWL.rglob("*.html"))
    if not found:
        raise SystemExit(f"no pages under {CRAWL}")
    return [(f"https://docs.example/{p.relative_to(CRAWL)}", p.read_bytes()) for p in found]


def rate(work, pages_: list[tuple[str, bytes]], passes: int) -> float:
    work(*pages_[0])  # warm-up outside the timing (imports, caches)
    started = time.process_time()
    for _ in range(passes):
        for url, html in pages_:
            work(url, html)
    return passes * len(pages_) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5, help="times each page is processed")
    args = parser.parse_args()
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    crawl = pages()
    opts, filters = ReadOptions(), DocumentFilters(FiltersSettings())
    verdicts: dict[str, int] = {}

    def ours(url: str, html: bytes) -> None:
        item = item_from_page(html, url, opts, url=url)
        if isinstance(item, FeedItem):
            verdict = filters.check(item.text, item.meta)
            if verdict is None:
                minhash(item.text)
            key = "kept" if verdict is None else f"rejected ({verdict.filter})"
            verdicts[key] = verdicts.get(key, 0) + 1

    def alone(url: str, html: bytes) -> None:
        trafilatura.extract(html, url=url, output_format="markdown")

    bare = rate(alone, crawl, args.passes)
    mine = rate(ours, crawl, args.passes)
    unmarked = [(url, html.replace(b'role="main"', b"")) for url, html in crawl]
    mine_unmarked = rate(ours, unmarked, args.passes)
    verdicts.clear()
    for url, html in crawl:  # what the path decides, counted once per page
        ours(url, html)
    bare_after = rate(alone, crawl, args.passes)  # either side of ours: drift cancels in the mean
    bare = (bare + bare_after) / 2
    ratio = mine / bare
    ratio_unmarked = mine_unmarked / bare
    size = sum(len(html) for _, html in crawl) / len(crawl) / 1024
    print(f"bench/ingest.py: {len(crawl)} real pages (mean {size:.0f} KB) x {args.passes} passes, one core")
    print(f"  trafilatura alone:                          {bare:7.1f} pages/s")
    print(f"  synthstream extraction + filters + MinHash: {mine:7.1f} pages/s   "
          f"({', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))})")
    print(f"  ratio = {ratio:.2f}   (target >= {RATIO_TARGET})  {'PASS' if ratio >= RATIO_TARGET else 'FAIL'}")
    print(f"  the same pages without role=\"main\" (all by the generic route):  {mine_unmarked:7.1f} pages/s, "
          f"ratio = {ratio_unmarked:.2f}  {'PASS' if ratio_unmarked >= RATIO_TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
