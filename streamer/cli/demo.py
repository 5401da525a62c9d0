"""`synthstream demo`: an offline end-to-end run of one method on bundled inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamer.cli.base import Subparsers, add_metrics_options, serve_metrics, settings_from


def register(sub: Subparsers) -> None:
    d = sub.add_parser("demo", help="offline end-to-end run of one method on bundled inputs")
    d.add_argument("--method", choices=["synthquestions", "glan"], default="synthquestions",
                   help="synthquestions: examples/ documents and seeds; glan: three taxonomy disciplines")
    d.add_argument("--docs", type=Path, help="synthquestions: documents to feed (default: examples/docs)")
    d.add_argument("--seeds", type=Path, help="synthquestions: seed instructions (default: examples/seeds.jsonl)")
    d.add_argument("--taxonomy", type=Path, help="glan: taxonomy file (default: the shipped one)")
    d.add_argument("--only", nargs="+", metavar="NAME",
                   help="glan: disciplines to run (default: Statistics, Contract law, Culinary arts)")
    d.add_argument("--out", type=Path,
                   help="dataset path (default: <data_dir>/demo/dataset.jsonl, glan: <data_dir>/demo-glan/...)")
    d.add_argument("--latency", type=float, default=0.2, help="simulator latency per request")
    add_metrics_options(d)
    d.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.ops.demo import DemoInputs, run_demo

    settings = settings_from(args)
    inputs = DemoInputs(method=args.method, docs=args.docs, seeds=args.seeds, taxonomy=args.taxonomy, only=args.only)
    with serve_metrics(args, settings):
        return run_demo(settings, inputs, out=args.out, latency=args.latency)
