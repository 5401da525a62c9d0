"""`synthstream broker`: a Kafka-protocol broker in the foreground, tansu (in memory) or Apache Kafka (durable)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from streamer.cli.base import Subparsers, settings_from
from streamer.cli.errors import UsageError


def register(sub: Subparsers) -> None:
    b = sub.add_parser("broker", help="run a Kafka-protocol broker in the foreground (embedded tansu, or Apache Kafka)")
    b.add_argument("--host")
    b.add_argument("--port", type=int)
    b.add_argument("--engine", choices=["tansu", "kafka"], default="tansu",
                   help="tansu: in memory, starts at once, keeps nothing (default); kafka: one Apache Kafka KRaft "
                        "node keeping topics, offsets and records in --data-dir (needs Java; jars fetched once)")
    b.add_argument("--data-dir", type=Path, help="kafka: where the broker keeps its log (default: <data_dir>/kafka)")
    b.set_defaults(handler=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    port = args.port or settings.broker.port
    if args.engine == "kafka":
        from streamer.kafka.apache import HOST, KafkaCluster, missing_tools

        if args.host and args.host != HOST:
            raise UsageError(f"--engine kafka listens on {HOST} only")
        reason = missing_tools()
        if reason:
            raise UsageError(f"--engine kafka cannot run here: {reason}")
        data_dir = (args.data_dir or settings.storage.data_dir / "kafka").resolve()
        broker: Any = KafkaCluster.single_node(data_dir, port)
        what = f"Apache Kafka (one KRaft node, durable: its log is in {data_dir}, kept across restarts)"
    else:
        from streamer.kafka.broker import EmbeddedBroker

        if args.data_dir:
            raise UsageError("--data-dir is for --engine kafka: tansu keeps its topics in memory")
        broker = EmbeddedBroker(args.host or settings.broker.host, port)
        what = ("the embedded broker (tansu; topics in memory, gone when it stops: the data dir keeps what was "
                "stored)")
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # Before the start: a client may connect (and a supervisor signal) as soon as the port opens.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
        print(f"broker listening on {broker.bootstrap_servers}: {what}; point other commands at it with "
              f"SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}", file=sys.stderr, flush=True)
        while not stopping and broker.running():
            time.sleep(0.2)
        crashed = not stopping
    finally:
        broker.stop()
    if crashed:
        print("synthstream broker: the broker process exited on its own", file=sys.stderr)
        return 1
    print("broker stopped", file=sys.stderr)
    return 0
