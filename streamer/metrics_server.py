"""The Prometheus endpoint of a worker process, and how `status` finds it.

A process serves one endpoint (prometheus_client's own HTTP server, in a daemon thread) for its
whole life: `demo` runs several workers in turn and they all report through it. While it serves,
the process registers itself in `<data_dir>/workers/<pid>.json` ({pid, host, url, prefix, stages});
the file goes when the endpoint stops, and `status` ignores files of processes that are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import orjson
from prometheus_client import start_http_server

from streamer.config import MetricsSettings, Settings

log = logging.getLogger(__name__)


class MetricsServerError(RuntimeError):
    """The endpoint could not be served (e.g. the port is taken); the message says where."""


@dataclass
class MetricsEndpoint:
    url: str
    server: WSGIServer
    thread: threading.Thread
    registration: Path | None = None

    def stop(self) -> None:
        unregister(self)
        self.server.shutdown()
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


def announce(settings: Settings, stages: list[str]) -> None:
    """Tell `status` which stages this process runs now (a no-op when it serves no metrics)."""
    endpoint = _serving
    if endpoint is None:
        return
    unregister(endpoint)
    path = registry_dir(settings) / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"pid": os.getpid(), "host": socket.gethostname(), "url": endpoint.url,
             "prefix": settings.kafka.topic_prefix, "stages": list(stages), "started": time.time()}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(entry))
    os.replace(tmp, path)  # readers never see half a file
    endpoint.registration = path


def unregister(endpoint: MetricsEndpoint) -> None:
    if endpoint.registration is not None:
        endpoint.registration.unlink(missing_ok=True)
        endpoint.registration = None


def registry_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "workers"


@dataclass
class WorkerEntry:
    pid: int
    host: str
    url: str
    prefix: str
    stages: list[str]


def registered_workers(settings: Settings) -> list[WorkerEntry]:
    """Workers of this pipeline (same topic prefix) that registered an endpoint and still run."""
    entries = []
    for path in sorted(registry_dir(settings).glob("*.json")):
        try:
            raw = orjson.loads(path.read_bytes())
            entry = WorkerEntry(int(raw["pid"]), str(raw["host"]), str(raw["url"]), str(raw["prefix"]),
                                [str(s) for s in raw["stages"]])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written by an older version, or removed meanwhile
        if entry.prefix == settings.kafka.topic_prefix and _alive(entry):
            entries.append(entry)
    return entries


def _alive(entry: WorkerEntry) -> bool:
    # A pid only means something on its own machine; elsewhere (a shared volume) the scrape decides.
    if entry.host != socket.gethostname():
        return True
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, run by another user
    return True
