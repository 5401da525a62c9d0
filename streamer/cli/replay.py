"""`synthstream replay`: make a stage reprocess its input history (rewind its group, or run it under a version)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from streamer.cli.base import (Subparsers, add_start_options, check_stages, command_errors, needs_running_broker,
                               settings_from, start_at)
from streamer.cli.errors import CommandError, UsageError


def register(sub: Subparsers) -> None:
    rp = sub.add_parser("replay", help="make a stage reprocess its input history")
    rp.add_argument("stage", help="stage name")
    add_start_options(rp, required=True, offset_help="PARTITION:OFFSET items (partitions not named keep "
                                                     "their position), or one OFFSET for every partition")
    rp.add_argument("--version", metavar="V",
                    help="instead of rewinding the stage's group, run the stage now under version V (new "
                         "output ids, own consumer group <stage>@V) until it has caught up")
    rp.add_argument("--no-progress", action="store_true", help="with --version: no progress display")
    rp.set_defaults(handler=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.kafka.admin import GroupBusyError
    from streamer.kafka.positions import PositionError
    from streamer.ops import replay

    settings = settings_from(args)
    check_stages([args.stage], STAGES)
    if args.version is not None and not _valid_version(args.version):
        raise UsageError(f"--version {args.version!r}: use letters, digits, '.', '_' and '-' (at most 40)")
    needs_running_broker(settings, "replay")
    stage = STAGES[args.stage]
    try:
        with command_errors(PositionError, replay.ReplayError, prefix=f"cannot replay {stage.name}: "):
            start = start_at(args)
            if args.version is None:
                done = asyncio.run(replay.reset(settings, stage, start))
            else:
                done = asyncio.run(replay.run_version(settings, stage, start, args.version,
                                                      progress=not args.no_progress))
    except GroupBusyError as exc:
        raise CommandError(f"cannot replay {stage.name}: {exc}; stop its workers first (a stopped worker leaves "
                           f"the group within about two session timeouts), or replay under a new --version, "
                           f"which has a group of its own", code=3) from exc
    print(_done_line(args, stage.name, start, done), file=sys.stderr)
    return 0


def _done_line(args: argparse.Namespace, stage: str, start: Any, done: Any) -> str:
    if args.version is None:
        return (f"stage {stage}: group {done.group} rewound on {done.topic} to {start.describe()} "
                f"({done.offsets_text()}); it reprocesses them when it next runs. Outputs get new ids beside the "
                f"old ones only if the stage's identity ({done.identity}) changed since")
    return (f"stage {stage} ran under version {args.version} (identity {done.identity}) in group "
            f"{done.group} from {start.describe()} ({done.offsets_text()}): {done.done} input records, "
            f"{done.produced} new records with new ids beside the old ones, {done.dead} dead letters. "
            f"Running workers of the stages downstream take them now (`synthstream status --until-idle` returns "
            f"when they are through; with none running, `synthstream run --until-idle`); to keep new input under "
            f"this version set "
            f"[stages.{stage}] version = \"{args.version}\" (its workers continue in {done.group})")


def _valid_version(version: str) -> bool:
    from pydantic import ValidationError

    from streamer.config import StageSettings

    try:
        StageSettings(version=version)
    except ValidationError:
        return False
    return True
