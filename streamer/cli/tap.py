"""`synthstream tap`: print a topic's records, live, without joining any consumer group."""

from __future__ import annotations

import argparse
import asyncio
import sys

from streamer.cli.base import (Subparsers, add_start_options, add_where_option, command_errors, needs_running_broker,
                               parse_wheres, settings_from, start_at, stop_on_signals)


def register(sub: Subparsers) -> None:
    t = sub.add_parser("tap", help="print a topic's records, live, without joining any consumer group")
    t.add_argument("topic", help="topic name without the prefix, e.g. situations, instructions, dlq")
    add_start_options(t, required=False, offset_help="OFFSET for every partition, or PARTITION:OFFSET items "
                                                     "(only those partitions)")
    t.add_argument("--follow", action="store_true",
                   help="keep printing new records until stopped (default start then: the current end)")
    add_where_option(t, "only records whose dotted path matches, e.g. data.stage=instruction method=glan")
    t.add_argument("--json", action="store_true", help="one JSON envelope per line, as stored on the topic")
    t.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    t.set_defaults(handler=cmd_tap)


def cmd_tap(args: argparse.Namespace) -> int:
    from streamer.kafka.positions import PositionError
    from streamer.kafka.reader import UnknownTopicError
    from streamer.ops.tap import TapRequest, known_topic, tap

    settings = settings_from(args)
    with command_errors(ValueError):  # PositionError is one
        request = TapRequest(known_topic(args.topic, settings.kafka.topic_prefix),
                             start_at(args, default="end" if args.follow else "beginning"), follow=args.follow,
                             wheres=parse_wheres(args.where), as_json=args.json, limit=args.limit)
    needs_running_broker(settings, "tap")

    async def body() -> int:
        return await tap(settings, request, stop_on_signals())

    with command_errors(UnknownTopicError, PositionError):
        shown = asyncio.run(body())  # `tap … | head` ends in BrokenPipeError: exit 0 (cli.errors)
    print(f"tap: {shown} records", file=sys.stderr)
    return 0
