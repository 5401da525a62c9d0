"""`synthstream export`: the stored samples as a chat-format dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.cli.base import Subparsers, settings_from


def register(sub: Subparsers) -> None:
    e = sub.add_parser("export", help="write the stored samples as a chat-format dataset")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--format", choices=["jsonl", "parquet"], help="default: from the file suffix, else jsonl")
    e.add_argument("--method", help="only samples of this method")
    e.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from streamer.storage.export import export_samples

    settings = settings_from(args)
    fmt = args.format or ("parquet" if args.out.suffix == ".parquet" else "jsonl")
    topic = f"{settings.kafka.topic_prefix}samples"
    result = export_samples(settings.storage.store_dir, topic, args.out, fmt, method=args.method)
    print(f"exported {result.rows} samples to {result.path} ({fmt}); "
          f"{result.skipped_duplicates} redelivered copies collapsed", file=sys.stderr)
    return 0
