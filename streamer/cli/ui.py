"""`synthstream ui`: the web console (pipeline graph, topic browser, samples, dead letters, report)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from streamer.cli.base import (
    Subparsers,
    _port,
    needs_running_broker,
    settings_from,
    stop_on_signals,
)

TOKEN_ENV = "SYNTHSTREAM_UI_TOKEN"


def register(sub: Subparsers) -> None:
    u = sub.add_parser("ui", help="web console: pipeline graph, topic browser, samples, dead letters, report")
    u.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other address requires the access token)")
    u.add_argument("--port", type=_port, default=8050, help="port (default 8050; 0: any free port)")
    u.add_argument("--token", help=f"access token (default: ${TOKEN_ENV}, else one made up and printed when "
                                   f"bound to a non-loopback address)")
    u.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the console is reached under through a reverse proxy (repeatable); "
                        "requests naming any other host than these, the loopback names and the bound "
                        "address are refused (421)")
    u.set_defaults(handler=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from streamer.ui.server import UiOptions, access_token, serve

    settings = settings_from(args)
    needs_running_broker(settings, "ui")
    token, made = access_token(args.host, args.token or os.environ.get(TOKEN_ENV) or None)
    options = UiOptions(host=args.host, port=args.port, token=token, allowed_hosts=tuple(args.allowed_host))

    def ready(url: str) -> None:
        if made:  # printed once, in the URL to open; a token the user chose is never printed
            print(f"synthstream ui: bound to {args.host}, so every request needs an access token; this one is "
                  f"made up for this run (set --token or ${TOKEN_ENV} to choose it)", file=sys.stderr)
            url += f"?token={token}"
        elif token:
            print(f"synthstream ui: bound to {args.host}: open the URL with ?token=<your token> once",
                  file=sys.stderr)
        print(f"synthstream ui: prefix {settings.kafka.topic_prefix} on {settings.kafka.bootstrap_servers}; "
              f"Ctrl-C stops", file=sys.stderr, flush=True)
        print(url, flush=True)

    async def body() -> None:
        await serve(settings, options, stop_on_signals(), ready)

    asyncio.run(body())
    print("synthstream ui: stopped", file=sys.stderr)
    return 0
