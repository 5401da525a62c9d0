"""`synthstream status`: per stage lag, rates, in flight, dead letters, rejections and LLM use."""

from __future__ import annotations

import argparse
import asyncio

from streamer.cli.base import Subparsers, needs_running_broker, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    st = sub.add_parser("status", help="per stage: lag, records/s in and out, in flight, dlq, rejected, LLM use")
    st.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0,
                    help="seconds between the two samples rates come from (default 2)")
    st.add_argument("--json", action="store_true", help="as JSON (with --watch: one object per line)")
    st.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from streamer.ops.status import run_status

    settings = settings_from(args)
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0 seconds")
    needs_running_broker(settings, "status")
    asyncio.run(run_status(settings, interval=args.interval, watch=args.watch, as_json=args.json))
    return 0
