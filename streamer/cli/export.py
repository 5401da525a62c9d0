"""`synthstream export`: the stored samples as a chat-format dataset with each sample's chain, and
its dataset card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.cli.base import Subparsers, command_errors, settings_from


def register(sub: Subparsers) -> None:
    e = sub.add_parser("export", help="write the stored samples as a chat-format dataset (and its dataset card)")
    e.add_argument("--out", type=Path, required=True, help="the dataset file; its card goes beside it (README.md)")
    e.add_argument("--format", choices=["jsonl", "parquet"], help="default: from the file suffix, else jsonl")
    e.add_argument("--data-dir", type=Path, help="where the store is (default: storage.data_dir; the demo's: "
                                                 "<data_dir>/demo)")
    e.add_argument("--method", help="only samples of this method (synthquestions, glan)")
    e.add_argument("--min-score", type=int, metavar="N", help="only samples the judge scored N or more (0-7)")
    e.add_argument("--version", metavar="STAGE=V", help="only samples STAGE made under version V: a stage version "
                                                       "(1-0a1b2c3d), its prompt file's version (2) or a replay "
                                                       "version (hot); V alone when only one stage has it")
    e.add_argument("--since", metavar="TIME", help="only samples made at or after TIME: ISO time "
                                                  "(2025-05-01T12:00) or an age like 30s, 10m, 2h, 1d")
    e.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from streamer.kafka.positions import PositionError, parse_since
    from streamer.ops.export import export_dataset
    from streamer.storage.export import AmbiguousVersionError, ExportFilters

    settings = settings_from(args)
    if args.data_dir is not None:
        settings.storage.data_dir = args.data_dir
    fmt = args.format or ("parquet" if args.out.suffix == ".parquet" else "jsonl")
    since = None
    if args.since:
        with command_errors(PositionError):
            since = parse_since(args.since) / 1000
    filters = ExportFilters(method=args.method, min_score=args.min_score, version=args.version, since=since,
                            since_text=args.since)
    with command_errors(AmbiguousVersionError):
        result = export_dataset(settings, args.out, fmt, filters)
    if args.version:
        print(f"--version {args.version}: samples made by {', '.join(sorted(result.counts.version_stages))} "
              f"under that version", file=sys.stderr)
    methods = ", ".join(f"{n} {m}" for m, n in result.counts.methods.most_common())
    print(f"exported {result.rows} of {result.stored} stored samples ({methods}) to {result.path} ({fmt}); "
          f"{result.skipped_duplicates} redelivered copies collapsed; dataset card: {result.card}", file=sys.stderr)
    print(result.path)
    return 0
