"""`synthstream simulate-llm`: serve the OpenAI-compatible LLM simulator."""

from __future__ import annotations

import argparse

from streamer.cli.base import Subparsers


def register(sub: Subparsers) -> None:
    s = sub.add_parser("simulate-llm", help="serve the OpenAI-compatible LLM simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    s.add_argument("--rpm", type=int, default=0, help="requests/min limit (0 = none)")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--malformed-rate", type=float, default=0.0, help="share of replies that are broken JSON")
    s.add_argument("--invalid-rate", type=float, default=0.0, help="share of replies that are JSON breaking the schema")
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-seconds", type=float, default=2.0,
                   help="seconds the batch API takes from a batch's creation to its completion")
    s.add_argument("--batch-failure-rate", type=float, default=0.0,
                   help="share of batch requests answered with an error (in the batch's error file)")
    s.set_defaults(handler=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamer.llm.simulator import SimulatorSettings, run_simulator
    from streamer.llm.simulator.batch_settings import BatchBehaviour

    run_simulator(SimulatorSettings(host=args.host, port=args.port, latency=args.latency, rpm=args.rpm,
                                    error_rate=args.error_rate, malformed_rate=args.malformed_rate,
                                    invalid_rate=args.invalid_rate, seed=args.seed,
                                    batch=BatchBehaviour(completion_seconds=args.batch_seconds,
                                                         failure_rate=args.batch_failure_rate)))
    return 0
