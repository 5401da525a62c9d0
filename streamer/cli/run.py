"""`synthstream run`: pipeline stages (all, or the named ones) and the storage sink."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from streamer.cli.base import Subparsers, add_metrics_options, check_stages, serve_metrics, settings_from, with_kafka

if TYPE_CHECKING:
    from streamer.config import Settings


def register(sub: Subparsers) -> None:
    r = sub.add_parser("run", help="run pipeline stages (all, or --stage NAME) and the sink")
    r.add_argument("--stage", action="append", metavar="NAME",
                   help="run only this stage ('sink' for the storage sink); repeatable")
    r.add_argument("--until-idle", action="store_true", help="exit once all input is processed")
    r.add_argument("--no-progress", action="store_true")
    add_metrics_options(r)
    r.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from consumers import PIPELINE, STAGES
    from streamer.runtime.worker import Worker

    settings = settings_from(args)
    names = args.stage or []
    check_stages(names, [*STAGES, "sink"])
    stages = [s for s in PIPELINE if not names or s.name in names]
    sink = not names or "sink" in names

    async def body(ready: Settings) -> None:
        await Worker(ready, stages, sink=sink, until_idle=args.until_idle, progress=not args.no_progress).run()

    with serve_metrics(args, settings):
        with_kafka(settings, "this run", body)
    return 0
