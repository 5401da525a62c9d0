"""The Prometheus endpoint of a worker process.

A process serves one endpoint (prometheus_client's own HTTP server, in a daemon thread) for its
whole life: `demo` runs several workers in turn and they all report through it. While it serves,
the process is listed in the worker registry (streamer.metrics.registry) so `status` finds it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from streamer.config import MetricsSettings, Settings

if TYPE_CHECKING:
    from streamer.metrics.runs import RunFile

log = logging.getLogger(__name__)


class MetricsServerError(RuntimeError):
    """The endpoint could not be served (e.g. the port is taken); the message says where."""


@dataclass
class MetricsEndpoint:
    url: str
    server: WSGIServer
    thread: threading.Thread
    registration: Path | None = None
    run: RunFile | None = None  # this process's counters on disk, from its first announcement

    def withdraw(self) -> None:
        """Take this endpoint out of the worker registry (its file there; streamer.metrics.registry)."""
        if self.registration is not None:
            self.registration.unlink(missing_ok=True)
            self.registration = None

    def stop(self) -> None:
        self.withdraw()
        if self.run is not None:
            self.run.close()  # the last totals, then finished runs folded
        # The server's loop (socketserver's serve_forever, as prometheus_client starts it) looks for
        # a shutdown between waits of 0.5 s for a connection: it is sent connections until it has
        # seen the shutdown, else the exit of `run --until-idle` waits for the end of that wait.
        shutting = threading.Thread(target=self.server.shutdown, daemon=True)
        shutting.start()
        while shutting.is_alive() and self.thread.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(self.server.server_address[:2], timeout=0.5).close()
            shutting.join(timeout=0.01)
        self.server.server_close()
        self.thread.join(timeout=5)


_serving: MetricsEndpoint | None = None  # one endpoint per process


def start_endpoint(config: MetricsSettings) -> MetricsEndpoint:
    assert config.port is not None
    try:
        server, thread = start_http_server(config.port, addr=config.host)
    except OSError as exc:
        raise MetricsServerError(f"cannot serve metrics on {config.host}:{config.port}: {exc.strerror}") from None
    host = config.host if config.host not in ("0.0.0.0", "::", "") else socket.gethostname()
    return MetricsEndpoint(f"http://{_url_host(host)}:{server.server_port}/metrics", server, thread)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def serve_metrics(settings: Settings) -> Iterator[MetricsEndpoint | None]:
    """Serve this process's metrics while the block runs, if `metrics.port` is set."""
    global _serving
    if settings.metrics.port is None:
        yield None
        return
    endpoint = start_endpoint(settings.metrics)
    log.info("serving Prometheus metrics at %s", endpoint.url)
    _serving = endpoint
    try:
        yield endpoint
    finally:
        _serving = None
        endpoint.stop()


def current() -> MetricsEndpoint | None:
    """The endpoint this process serves, if any."""
    return _serving
