"""`synthstream dlq list|show|redrive`: dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from streamer.cli.base import (Subparsers, add_where_option, check_stages, command_errors, needs_running_broker,
                               parse_wheres, settings_from)


def register(sub: Subparsers) -> None:
    q = sub.add_parser("dlq", help="dead letters: list, show, redrive")
    dlq = q.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    ql = dlq.add_parser("list", help="dead letters with stage, error, attempts and whether redriven")
    qs = dlq.add_parser("show", help="one dead letter, whole, as JSON")
    qs.add_argument("ids", nargs=1, metavar="ID", help="dead-letter id (a unique prefix is enough)")
    qr = dlq.add_parser("redrive", help="put dead letters' inputs back on their stage's input topic, once each")
    qr.add_argument("ids", nargs="*", metavar="ID", help="only these dead letters (default: all selected)")
    for action in (ql, qr):
        action.add_argument("--stage", help="only dead letters of this stage")
        add_where_option(action, "only dead letters whose dotted path matches, e.g. data.error_type=LLMOutputError")
    ql.set_defaults(handler=cmd_list)
    qs.set_defaults(handler=cmd_show)
    qr.set_defaults(handler=cmd_redrive)


def _selected(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The settings and the dead letters the command line selects."""
    from consumers import STAGES
    from streamer.ops import dlq

    settings = settings_from(args)
    stage = getattr(args, "stage", None)
    if stage is not None:
        check_stages([stage], STAGES)
    wheres = parse_wheres(getattr(args, "where", []))
    needs_running_broker(settings, "dlq")
    with command_errors(dlq.UnknownDeadLetterError):
        entries = dlq.select(asyncio.run(dlq.load(settings)), stage=stage, wheres=wheres,
                             ids=getattr(args, "ids", None))
    return settings, entries


def cmd_list(args: argparse.Namespace) -> int:
    from streamer.ops import dlq

    _, entries = _selected(args)
    print("\n".join(dlq.table_lines(entries)))
    pending = sum(1 for e in entries if e.redrive is None)
    print(f"{len(entries)} dead letters: {pending} pending, {len(entries) - pending} redriven", file=sys.stderr)
    if any(e.stored_only for e in entries):
        print(dlq.STORED_ONLY_NOTE, file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from streamer.ops import dlq

    _, entries = _selected(args)
    for entry in entries:
        print(orjson.dumps(entry.envelope.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        print(dlq.status_line(entry), file=sys.stderr)
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from streamer.ops import dlq

    settings, entries = _selected(args)
    report = asyncio.run(dlq.redrive(settings, entries))
    for marker in report.sent:
        print(dlq.redrive_line(marker))
    for entry in report.unusable:
        print(f"synthstream: not redriven {entry.envelope.id}: its input is not a synthstream record",
              file=sys.stderr)
    print(f"redrove {len(report.sent)} dead letters to their stages' input topics"
          f"{f' ({report.collapsed} redelivered copies sent once)' if report.collapsed else ''}; "
          f"{report.already} were redriven before and were not sent again; the stages process them when "
          f"they run", file=sys.stderr)
    return 0
