"""`synthstream report`: charts and an HTML summary of the stored dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.cli.base import Subparsers, command_errors, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    rep = sub.add_parser("report", help="charts and an HTML summary of the stored dataset")
    rep.add_argument("--out", type=Path, help="directory to write (default: <data_dir>/report)")
    rep.add_argument("--method", help="only samples (and their rejections) of this method")
    rep.add_argument("--data-dir", type=Path, help="the data to report on (default: storage.data_dir)")
    rep.add_argument("--sample-size", type=int, default=1000,
                     help="instructions embedded for the diversity figures (default 1000)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the diversity sample (default 0)")
    rep.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.ops.costs import run_costs
    from streamer.report import ReportError, ReportOptions, headline, make_report

    settings = settings_from(args)
    if args.sample_size < 2:
        raise UsageError("--sample-size must be at least 2 (diversity compares pairs)")
    data_dir = args.data_dir or settings.storage.data_dir
    encoder_model = STAGES["embed"].bind(settings).options.model
    options = ReportOptions(store_dir=data_dir / "store", prefix=settings.kafka.topic_prefix,
                            out=args.out or data_dir / "report", method=args.method, sample_size=args.sample_size,
                            seed=args.seed, encoder_model=encoder_model, costs=run_costs(settings, data_dir))
    with command_errors(ReportError, code=1):
        figures = make_report(options)
    print(headline(figures, options.out), file=sys.stderr)
    print(options.out / "index.html")
    return 0
