"""`synthstream llm check [--stage NAME]`: probe the configured LLM endpoints and print the settings to use."""

from __future__ import annotations

import argparse
import asyncio

from streamer.cli.base import Subparsers, check_stages, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    s = sub.add_parser("llm", help="the LLM endpoints: probe what they can do")
    actions = s.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", help="probe each configured endpoint and model: models listed, structured-output dialect, "
        "context length, whether the system message arrives, latency and tokens/s; print the settings to use")
    check.add_argument("--stage", action="append", default=[], metavar="NAME",
                       help="probe this stage's endpoint (repeatable); default: every LLM stage's")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.llm.check import check_endpoint, settings_table

    settings = settings_from(args)
    llm_stages = [name for name, stage in STAGES.items() if stage.prompt is not None]
    check_stages(args.stage, llm_stages)
    # One probe per endpoint and model, whichever stages share it.
    endpoints: dict[tuple[str | None, str], tuple[object, list[str]]] = {}
    for name in args.stage or llm_stages:
        llm = STAGES[name].bind(settings).settings.llm
        endpoints.setdefault((llm.base_url, llm.model), (llm, []))[1].append(name)
    unset = [stage for (url, _), (_, stages) in endpoints.items() if url is None for stage in stages]
    if unset:
        raise UsageError(f"no llm.base_url for {', '.join(unset)}: set [llm] base_url (or "
                         "[stages.NAME.llm] base_url) to the endpoint to check")
    default = (settings.llm.base_url, settings.llm.model)
    failed = 0
    for key, (llm, stages) in endpoints.items():
        report = asyncio.run(check_endpoint(llm))
        print(report.render())
        print(f"  used by: {', '.join(stages)}\n")
        tables = ["llm"] if key == default and not args.stage else [f"stages.{stage}.llm" for stage in stages]
        print(f"settings to use:\n{settings_table(report, tables)}\n")
        failed += not report.usable
    return 1 if failed else 0
