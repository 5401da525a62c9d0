"""`synthstream` command line."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys

from streamer.cli import (batch, broker, config, demo, dlq, encoder, estimate, export, feed, glan, llm, replay, report,
                          run, simulate, status, tap, ui)
from streamer.cli.errors import run_handler
from streamer.cli.logs import configure as configure_logging

# In the order of the help's command list; each module adds its own subparser and handler.
COMMANDS = (broker, run, replay, tap, dlq, batch, status, estimate, ui, feed, glan, export, report, config, encoder, llm,
            simulate, demo)


def main(argv: list[str] | None = None) -> int:
    # Model loading prints progress bars and hub notices; the encoder logs one line instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return run_handler(args.handler, args)


def entry() -> None:
    """The program's entry point (`synthstream`, `python -m streamer.cli`): `main`, then exit.

    A `run` spends about a second (measured on a loaded 2-core machine; ~1.5 s more with torch, the
    `[torch]` extra's encoder fallback) tearing down the interpreter (ONNX Runtime, FAISS, Arrow and
    every module), which a finite run (`run --until-idle`) would add to its end. Everything of ours
    is closed by then (clients, caches, the worker registry, in `finally` blocks), so such a process
    runs its exit handlers (the run's counters), flushes its output and leaves at once. Other
    commands exit normally. Called as a function (tests), `main` returns normally instead.
    """
    _few_malloc_arenas()
    # Arrow's own allocator (jemalloc/mimalloc) keeps what the sink's tables freed; the system one
    # gives it back with everything else (measured: a whole-pipeline run's peak 428 -> 382 MB).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    code = main()
    if "torch" in sys.modules or run.workers_closed:
        atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter would run first (logging.shutdown too)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and a worker
    has several (encoder, FAISS, SQLite writes): their half-empty arenas cost ~50 MB of RSS
    (measured on `run`). Two arenas are plenty for one event loop and a few helper threads."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthstream", description=__doc__)
    p.add_argument("--config", help="config file (default: ./synthstream.toml or $SYNTHSTREAM_CONFIG)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


if __name__ == "__main__":  # pragma: no cover
    entry()
