"""`synthstream broker`: the embedded Kafka-protocol broker in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from streamer.cli.base import Subparsers, settings_from


def register(sub: Subparsers) -> None:
    b = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    b.add_argument("--host")
    b.add_argument("--port", type=int)
    b.set_defaults(handler=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from streamer.kafka.broker import EmbeddedBroker

    settings = settings_from(args)
    broker = EmbeddedBroker(args.host or settings.broker.host, args.port or settings.broker.port)
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # Before the start: a client may connect (and a supervisor signal) as soon as the port opens.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
        print(f"embedded broker listening on {broker.bootstrap_servers} (pid {broker.process.pid}; topics in "
              f"memory, gone when it stops: the data dir keeps what was stored); point other commands at it with "
              f"SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}", file=sys.stderr, flush=True)
        while not stopping and broker.process and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.returncode if broker.process and broker.process.poll() is not None else 0
    finally:
        broker.stop()
    print("embedded broker stopped", file=sys.stderr)
    return code or 0
