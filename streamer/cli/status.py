"""`synthstream status`: per stage lag, rates, in flight, dead letters, rejections and LLM use."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from streamer.cli.base import Subparsers, needs_running_broker, settings_from
from streamer.cli.errors import CommandError, UsageError

if TYPE_CHECKING:
    from streamer.config import Settings


def register(sub: Subparsers) -> None:
    st = sub.add_parser("status", help="per stage: lag, records/s in and out, in flight, dlq, rejected, LLM use")
    st.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0,
                    help="seconds between the two samples rates come from (default 2)")
    st.add_argument("--json", action="store_true", help="as JSON (with --watch: one object per line)")
    st.add_argument("--until-idle", action="store_true",
                    help="print no table: wait until every stage and the sink have consumed all their input "
                         "(workers in other processes), saying what is left every few seconds, then exit 0")
    st.add_argument("--timeout", type=float, metavar="S",
                    help="with --until-idle: give up after S seconds, saying what is left (exit 1)")
    st.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from streamer.ops.status import run_status

    settings = settings_from(args)
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0 seconds")
    needs_running_broker(settings, "status")
    if args.timeout is not None and not args.until_idle:
        raise UsageError("--timeout goes with --until-idle")
    if args.until_idle:
        return _until_idle(settings, args)
    asyncio.run(run_status(settings, interval=args.interval, watch=args.watch, as_json=args.json))
    return 0


def _until_idle(settings: Settings, args: argparse.Namespace) -> int:
    from streamer.ops.idle import wait_until_idle

    if args.watch or args.json:
        raise UsageError("--until-idle prints no table: use it without --watch and --json")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    idle, waited, left = asyncio.run(wait_until_idle(settings, args.interval, say, args.timeout))
    if not idle:
        raise CommandError(f"not idle after {waited:.0f}s ({left})")
    say(f"idle: every stage and the sink have consumed all their input (waited {waited:.0f}s)")
    return 0
