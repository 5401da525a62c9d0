"""`synthstream simulate-llm`: serve the OpenAI-compatible LLM simulator."""

from __future__ import annotations

import argparse

from streamer.cli.base import Subparsers

# What the simulator can be told to play (streamer.llm.simulator.settings); listed here so that
# `--help` does not import the simulator.
RESPONSE_FORMATS = ("json_schema", "json_object_schema", "json_object", "ignored")
QUIRKS = ("fence", "prose", "second_object", "control_chars", "smart_quotes", "think", "reasoning_content",
          "echo", "empty")


def register(sub: Subparsers) -> None:
    s = sub.add_parser("simulate-llm", help="serve the OpenAI-compatible LLM simulator",
                       description="An OpenAI-compatible chat endpoint for tests and dry runs. Besides load "
                       "faults (--rpm, --error-rate, ...) it plays the ways real model servers differ: which "
                       "response_format they speak, context limits, chat templates that drop the system "
                       "message, verbose models and how models dress their JSON.")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    s.add_argument("--rpm", type=int, default=0, help="requests/min limit (0 = none)")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--malformed-rate", type=float, default=0.0, help="share of replies that are broken JSON")
    s.add_argument("--invalid-rate", type=float, default=0.0, help="share of replies that are JSON breaking the schema")
    s.add_argument("--seed", type=int)
    s.add_argument("--response-format", choices=RESPONSE_FORMATS, default="json_schema",
                   help="the richest response_format honoured: json_schema (hosted APIs, vLLM); json_object_schema "
                   "(llama-cpp-python: json_schema answered 500); json_object (a schema answered 400); ignored")
    s.add_argument("--quirk", action="append", choices=QUIRKS, default=[], metavar="QUIRK",
                   help=f"dress every reply as real models do; repeatable: {', '.join(QUIRKS)}")
    s.add_argument("--answer-tokens", type=int, default=0, metavar="N",
                   help="every answer needs N tokens (a verbose model): cut at a smaller max_tokens, "
                   "finish_reason=length")
    s.add_argument("--context-tokens", type=int, default=0, metavar="N",
                   help="context window: prompt + max_tokens above N is answered 400 with a context-length error")
    s.add_argument("--drop-system", action="store_true",
                   help="the chat template drops system messages (as Gemma's does)")
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
                                    response_format=args.response_format, quirks=args.quirk,
                                    answer_tokens=args.answer_tokens, context_tokens=args.context_tokens,
                                    drop_system=args.drop_system,
                                    batch=BatchBehaviour(completion_seconds=args.batch_seconds,
                                                         failure_rate=args.batch_failure_rate)))
    return 0
