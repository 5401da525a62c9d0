"""`synthstream glan propose-taxonomy`: GLAN tools (taxonomy-driven generation)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from streamer.cli.base import Subparsers, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    g = sub.add_parser("glan", help="GLAN tools (taxonomy-driven generation)")
    glan = g.add_subparsers(dest="glan_command", required=True, metavar="ACTION")
    pt = glan.add_parser("propose-taxonomy", help="ask the LLM to draft a taxonomy (YAML) for a person to review")
    pt.add_argument("--out", type=Path, required=True, help="YAML file to write")
    pt.add_argument("--fields", type=int, default=11, help="broad fields (default 11)")
    pt.add_argument("--sub-fields", type=int, default=3, help="sub-fields per field (default 3)")
    pt.add_argument("--disciplines", type=int, default=5, help="disciplines per sub-field (default 5)")
    pt.add_argument("--simulate", action="store_true", help="use the built-in LLM simulator (a dry run)")
    pt.set_defaults(handler=cmd_propose_taxonomy)


def cmd_propose_taxonomy(args: argparse.Namespace) -> int:
    from producers.taxonomy_proposal import ProposalShape, propose_taxonomy
    from streamer.llm.simulator import simulated_endpoint

    settings = settings_from(args)
    if min(args.fields, args.sub_fields, args.disciplines) < 1:
        raise UsageError("--fields, --sub-fields and --disciplines must be at least 1")
    shape = ProposalShape(args.fields, args.sub_fields, args.disciplines)

    async def body() -> Any:
        if not args.simulate:
            return await propose_taxonomy(settings, args.out, shape)
        async with simulated_endpoint(settings.llm):
            print("synthstream: using the LLM simulator: the names will be nonsense", file=sys.stderr)
            return await propose_taxonomy(settings, args.out, shape)

    taxonomy = asyncio.run(body())
    fields = len({d.field for d in taxonomy.disciplines})
    print(f"wrote {args.out}: {fields} fields, {len(taxonomy.disciplines)} disciplines; review and edit it, "
          f"then `synthstream feed taxonomy {args.out}`", file=sys.stderr)
    return 0
