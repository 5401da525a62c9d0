"""`synthstream run`: pipeline stages (all, or the named ones) and the storage sink."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from streamer.cli.base import Subparsers, add_metrics_options, check_stages, serve_metrics, settings_from, with_kafka
from streamer.cli.errors import CommandError

if TYPE_CHECKING:
    from streamer.config import Settings
    from streamer.runtime.stage import Stage


# Set once this process's workers have stopped and closed what they held: the entry point then
# leaves without the interpreter's teardown (streamer.cli.entry).
workers_closed = False


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
    stages = _without_running_writers(settings, [s for s in PIPELINE if not names or s.name in names], names)
    sink = not names or "sink" in names

    async def body(ready: Settings) -> list:
        worker = Worker(ready, stages, sink=sink, until_idle=args.until_idle, progress=not args.no_progress)
        await worker.run()
        return worker.failed_stages()

    global workers_closed
    with serve_metrics(args, settings):
        failed = with_kafka(settings, "this run", body)
    workers_closed = True
    if args.until_idle and failed:
        # A run whose records end in the dlq made no data: say so, and fail (scripts and CI see it).
        share = settings.run.max_dlq_share
        raise CommandError("run failed: " + "; ".join(o.describe() for o in failed)
                           + f" (run.max_dlq_share is {share:g}); see `synthstream dlq list`")
    return 0


def _without_running_writers(settings: Settings, stages: list[Stage], named: list[str]) -> list[Stage]:
    """`stages` less the single-writer ones another process on this machine already writes: a
    whole-pipeline run leaves them to it (saying so); naming one with --stage is refused."""
    from streamer.ops.writers import running_writers

    held = running_writers(settings, stages)
    for name, pid in held.items():
        writer = f"pid {pid}"
        if name in named:
            raise CommandError(f"cannot run {name}: {writer} is already its writer (state in "
                               f"{settings.storage.data_dir}/state; one writer per data dir); it processes "
                               f"{name}'s input as it arrives, so nothing is lost. Stop it first to run {name} here",
                               code=3)
        print(f"synthstream: {name} not run here: {writer} is already its writer (one per data dir) and "
              f"processes its input; the other stages run", file=sys.stderr)
    return [stage for stage in stages if stage.name not in held]
