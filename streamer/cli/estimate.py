"""`synthstream estimate FEED… [--seeds PATH…]`: calls, tokens, cost and time of a run, before it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from streamer.cli.base import Subparsers, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    e = sub.add_parser("estimate", help="calls, tokens, cost and time of a run, from a sample of its inputs")
    e.add_argument("paths", nargs="+", metavar="FEED", help="documents, as `feed docs` takes them")
    e.add_argument("--seeds", nargs="*", default=[], metavar="PATH", help="seed instructions, as `feed seeds` "
                   "takes them (situation needs attributed seeds as examples)")
    e.add_argument("--sample", type=int, default=20, metavar="N", help="documents (and seeds) run through the "
                   "stages to measure (default 20), spread over the input")
    e.add_argument("--simulate", action="store_true", help="measure on the LLM simulator instead of the configured "
                   "endpoints (each stage keeps its model, so its price)")
    e.add_argument("--text-field", help="field holding a document's text in JSONL/Parquet (default feed.text_field)")
    e.add_argument("--json", action="store_true", help="the estimate as JSON")
    e.set_defaults(handler=cmd_estimate)


def read_inputs(settings: Any, kind: str, paths: list[str], text_field: str | None) -> list[Any]:
    """The root records `feed` would send for `paths` (documents after the filters and the split; the
    near-duplicate check, which needs the feed's index, is left out)."""
    from producers.root_records import part_records, to_record
    from producers.filters import DocumentFilters
    from producers.items import BadInput, ReadOptions, Skipped
    from producers.paths import read_paths

    default = settings.feed.text_field if kind == "docs" else settings.feed.seed_text_field
    opts = ReadOptions(text_field=text_field or default, max_bytes=settings.feed.max_doc_bytes)
    f = settings.feed.filters
    filters = DocumentFilters(f) if kind == "docs" and f.enabled else None
    records, seen = [], set()
    for item in read_paths(paths, opts):
        if isinstance(item, (BadInput, Skipped)):
            continue
        record = to_record(kind, item)
        if record.id in seen:
            continue
        seen.add(record.id)
        if filters is None:
            records.append(record)
        elif filters.check(record.data["text"], record.data["meta"]) is None:
            records.extend(part_records(record, f.max_chars, f.long_documents == "truncate", f.min_chars))
    return records


def cmd_estimate(args: argparse.Namespace) -> int:
    from consumers import downstream_of
    from streamer.ops.estimate import estimate

    if args.sample < 1:
        raise UsageError("--sample must be at least 1")
    settings = settings_from(args)
    inputs = {"docs": read_inputs(settings, "docs", args.paths, args.text_field)}
    if args.seeds:
        inputs["seeds"] = read_inputs(settings, "seeds", args.seeds, None)
    if not inputs["docs"]:
        raise UsageError(f"no documents in {', '.join(args.paths)} (after the feed's filters)")
    if not args.simulate and not settings.llm.base_url:
        print("synthstream estimate: no llm.base_url configured: the sample goes to the default endpoint; "
              "--simulate measures on the simulator", file=sys.stderr)
    if args.simulate and "threshold" not in settings.stages.get("judge", {}):
        # As in the demo: simulated rubric scores are noise, filtering on them would drop records at random.
        settings.stages.setdefault("judge", {})["threshold"] = 0
    stages = downstream_of(*inputs)
    print(f"estimate: running {min(args.sample, len(inputs['docs']))} of {len(inputs['docs'])} documents"
          + (f" and {min(args.sample, len(inputs['seeds']))} of {len(inputs['seeds'])} seeds" if args.seeds else "")
          + f" through {', '.join(s.name for s in stages)}", file=sys.stderr, flush=True)
    result = asyncio.run(estimate(settings, stages, inputs, args.sample, simulate=args.simulate))
    if args.json:
        print(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(result.table_lines()))
    return 0
