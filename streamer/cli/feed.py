"""`synthstream feed docs|seeds|taxonomy`: put inputs on their topic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.cli.base import Subparsers, command_errors, settings_from, stop_on_signals, with_kafka
from streamer.cli.errors import UsageError

if TYPE_CHECKING:
    from streamer.config import Settings


def register(sub: Subparsers) -> None:
    f = sub.add_parser("feed", help="put documents, seed instructions or taxonomy disciplines on their topic")
    f.add_argument("kind", choices=["docs", "seeds", "taxonomy"])
    f.add_argument("paths", nargs="*", metavar="PATH",
                   help="docs/seeds: JSONL/Parquet file, directory, or - for stdin; docs also .txt/.md/.html "
                        "pages and WARC/ARC/WET web archives (.warc[.gz], .arc[.gz], .warc.wet[.gz]); "
                        "taxonomy: one YAML file (default: the shipped taxonomy)")
    f.add_argument("--only", nargs="+", metavar="NAME",
                   help="taxonomy: only these disciplines (a field or sub-field name selects all under it)")
    f.add_argument("--again", action="store_true",
                   help="taxonomy: also send disciplines already on glan.disciplines")
    f.add_argument("--text-field", help="field holding the text (docs: feed.text_field, seeds: feed.seed_text_field)")
    f.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="docs/seeds: do not send inputs that already ended in the store (as a sample, rejection or "
                        "dead letter); after losing the broker, feeding the same inputs again sends exactly the "
                        "unfinished work (default: on)")
    f.add_argument("--follow", action="store_true", help="keep watching for new files/lines until stopped")
    f.add_argument("--report", type=Path, help="write the bad-input report as JSON to this file")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(handler=cmd_feed)


def cmd_feed(args: argparse.Namespace) -> int:
    from producers.feed import feed

    if args.kind == "taxonomy":
        return cmd_feed_taxonomy(args)
    if not args.paths:
        raise UsageError(f"feed {args.kind} needs at least one PATH (a file, a directory, or - for stdin)")
    settings = settings_from(args)
    _note_if_ephemeral(settings)

    async def body(ready: Settings) -> Any:
        return await feed(ready, args.kind, args.paths, text_field=args.text_field, follow=args.follow,
                          stop=stop_on_signals(), progress=not args.no_progress, resume=args.resume)

    report = with_kafka(settings, "this feed", body)
    if args.report:
        args.report.write_bytes(report.to_json())
    print(report.summary(), file=sys.stderr)
    return 0


def cmd_feed_taxonomy(args: argparse.Namespace) -> int:
    from producers.taxonomy_feed import feed_taxonomy
    from producers.taxonomy import DEFAULT_TAXONOMY, TaxonomyError, load_taxonomy

    if len(args.paths) > 1:
        raise UsageError("feed taxonomy takes one taxonomy file")
    path = Path(args.paths[0]) if args.paths else DEFAULT_TAXONOMY
    with command_errors(TaxonomyError):
        taxonomy = load_taxonomy(path)
        taxonomy.select(args.only)  # name errors before any broker starts
    settings = settings_from(args)
    _note_if_ephemeral(settings)

    async def body(ready: Settings) -> Any:
        return await feed_taxonomy(ready, taxonomy, only=args.only, again=args.again)

    report = with_kafka(settings, "this feed", body)
    print(report.summary(), file=sys.stderr)
    return 0


def _note_if_ephemeral(settings: Settings) -> None:
    if not settings.kafka.bootstrap_servers:
        print("synthstream: note: records fed to a broker started just for this command are gone when it "
              "exits; run `synthstream broker` and set SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS to keep them",
              file=sys.stderr)
