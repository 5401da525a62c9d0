"""What several commands share: settings, common options, the broker checks, signal handling.

Heavy modules (the stages, Kafka clients, the metrics endpoint) are imported inside the
functions, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator

from streamer.cli.errors import CommandError, UsageError

if TYPE_CHECKING:
    from streamer.config import Settings

Subparsers = Any  # argparse's _SubParsersAction: what each command module's `register` adds its parser to


# Settings ------------------------------------------------------------------------------------------
def settings_from(args: argparse.Namespace) -> Settings:
    """The effective settings, every stage's options validated (ConfigError before anything starts)."""
    from consumers import STAGES
    from streamer.config import load_settings

    settings = load_settings(args.config)
    settings.check_stage_names(set(STAGES))
    for stage in STAGES.values():  # surface bad stage options before anything starts
        stage.bind(settings)
    return settings


def check_stages(names: Iterable[str], known: Iterable[str]) -> None:
    """UsageError naming the stages not among `known`."""
    known = list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown stage {', '.join(unknown)}; stages: {', '.join(known)}")


@contextmanager
def command_errors(*types: type[BaseException], prefix: str = "", code: int = 2) -> Iterator[None]:
    """Exceptions of `types` raised inside end the command: `synthstream: <prefix><exc>`, exit `code`
    (2 by default: the command line asked for something that cannot be done)."""
    try:
        yield
    except types as exc:
        raise CommandError(f"{prefix}{exc}", code=code) from exc


# Metrics options -----------------------------------------------------------------------------------
def add_metrics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics on this port (0: any free port, logged); default: metrics.port")
    p.add_argument("--metrics-host", metavar="HOST", help="address to bind (default: metrics.host, 127.0.0.1)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def serve_metrics(args: argparse.Namespace, settings: Settings) -> Any:
    """The metrics endpoint of this process, as configured and overridden by the command line."""
    from streamer.metrics.endpoint import serve_metrics as serve

    if args.metrics_host is not None:
        settings.metrics.host = args.metrics_host
    if args.metrics_port is not None:
        settings.metrics.port = args.metrics_port
    return serve(settings)


# Start positions and record filters ----------------------------------------------------------------
def add_start_options(p: argparse.ArgumentParser, *, required: bool, offset_help: str) -> None:
    start = p.add_mutually_exclusive_group(required=required)
    start.add_argument("--from-beginning", action="store_true", help="from the start of the topic")
    start.add_argument("--offset", nargs="+", metavar="P:N", help=offset_help)
    start.add_argument("--since", metavar="TIME", help="from the first record at or after TIME: ISO time "
                                                      "(2025-05-01T12:00) or an age like 30s, 10m, 2h, 1d")


def start_at(args: argparse.Namespace, default: str = "beginning") -> Any:
    """The start position the options name; PositionError (one line) if they are malformed."""
    from streamer.kafka.positions import StartAt

    return StartAt.from_args(from_beginning=args.from_beginning, offset=args.offset, since=args.since,
                             default=default)


def add_where_option(p: argparse.ArgumentParser, help: str) -> None:  # noqa: A002 - argparse's own word
    p.add_argument("--where", action="extend", nargs="+", default=[], metavar="FIELD=VALUE", help=help)


def parse_wheres(texts: list[str]) -> list[Any]:
    """The --where filters; a malformed one is a UsageError."""
    from streamer.ops.query import Where

    with command_errors(ValueError):
        return [Where.parse(text) for text in texts]


# Kafka -----------------------------------------------------------------------------------------------
def needs_running_broker(settings: Settings, command: str) -> None:
    """UsageError unless a broker is configured: one started for this command alone would be empty."""
    if not settings.kafka.bootstrap_servers:
        raise UsageError(f"{command} needs kafka.bootstrap_servers: a broker started for one command has no "
                         f"topics to read")


def with_kafka(settings: Settings, purpose: str, body: Callable[[Settings], Awaitable[Any]]) -> Any:
    """Run `body` with settings pointing at a reachable broker (the configured one, or one started now)."""
    from streamer.kafka.clients import kafka_available

    with kafka_available(settings, purpose) as ready:
        return asyncio.run(body(ready))


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; call it inside the running event loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
