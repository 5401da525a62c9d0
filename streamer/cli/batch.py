"""`synthstream batch list|cancel`: the batch lane's batches."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from streamer.cli.base import Subparsers, check_stages, command_errors, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    b = sub.add_parser("batch", help="batches of stages in batch mode: list, cancel")
    batch = b.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    bl = batch.add_parser("list", help="batches with stage, state, request counts, age and cost")
    bl.add_argument("--open", action="store_true", help="only batches whose results are not collected yet")
    bl.add_argument("--json", action="store_true", help="one JSON object per batch")
    bl.add_argument("--no-refresh", action="store_true", help="the records only: do not ask the provider")
    bc = batch.add_parser("cancel", help="cancel open batches at the provider; their unfinished requests are "
                                         "dead-lettered (redrive them later)")
    bc.add_argument("ids", nargs="*", metavar="ID", help="batch ids (provider or local; a unique prefix is enough)")
    for action in (bl, bc):
        action.add_argument("--stage", help="only batches of this stage")
    bl.set_defaults(handler=cmd_list)
    bc.set_defaults(handler=cmd_cancel)


def _views(args: argparse.Namespace, open_only: bool) -> tuple[object, list]:
    from consumers import STAGES
    from streamer.ops import batches

    settings = settings_from(args)
    if args.stage is not None:
        check_stages([args.stage], STAGES)
    return settings, batches.load(settings, stage=args.stage, open_only=open_only)


def cmd_list(args: argparse.Namespace) -> int:
    from streamer.ops import batches

    settings, views = _views(args, args.open)
    if not args.no_refresh:
        asyncio.run(batches.refresh(settings, views))
    if args.json:
        for view in views:
            print(orjson.dumps(view.to_json()).decode())
    else:
        print("\n".join(batches.table_lines(views)))
    open_ = sum(1 for v in views if not v.row.collected)
    print(f"{len(views)} batches: {open_} open, {len(views) - open_} collected", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from streamer.ops import batches

    if not args.ids and args.stage is None:
        raise UsageError("batch cancel: name batch ids, or --stage STAGE for all its open batches")
    settings, views = _views(args, open_only=not args.ids)
    if args.ids:
        with command_errors(batches.UnknownBatchError):
            views = batches.select(views, args.ids)
    results = asyncio.run(batches.cancel(settings, views))
    for view, what in results:
        print(f"{view.name} ({view.row.stage}): {what}")
    return 0 if all(not what.startswith("not cancelled") for _, what in results) else 1
