"""The worker registry: how `status` finds the metrics endpoints of a pipeline's workers.

While a process serves metrics it registers itself in `<data_dir>/workers/<pid>.json`
({pid, host, url, prefix, stages, run}); the file goes when the endpoint stops, and `status` ignores
files of processes that are gone. Every worker process, with an endpoint or not, also keeps its
run's counters on disk (streamer.metrics.runs), so they outlive it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from streamer.config import Settings
from streamer.metrics.endpoint import current
from streamer.locks import process_alive, write_atomically
from streamer.metrics.runs import run_of


def announce(settings: Settings, stages: list[str]) -> None:
    """Tell `status` which stages this process runs now: its run's counters on disk always, its
    endpoint when it serves metrics."""
    run = run_of(settings)
    run.start(list(stages))
    endpoint = current()
    if endpoint is None:
        return
    endpoint.withdraw()  # an earlier announcement of this process
    endpoint.run = run  # closed when the endpoint stops (else at exit)
    path = registry_dir(settings) / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"pid": os.getpid(), "host": socket.gethostname(), "url": endpoint.url,
             "prefix": settings.kafka.topic_prefix, "stages": list(stages), "started": time.time(),
             "run": run.run_id}
    write_atomically(path, orjson.dumps(entry))  # readers never see half a file
    endpoint.registration = path


def registry_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "workers"


@dataclass
class WorkerEntry:
    pid: int
    host: str
    url: str
    prefix: str
    stages: list[str]
    run: str | None = None  # the run file's id (streamer.metrics.runs); None from an older version


def registered_workers(settings: Settings) -> list[WorkerEntry]:
    """Workers of this pipeline (same topic prefix) that registered an endpoint and still run."""
    entries = []
    for path in sorted(registry_dir(settings).glob("*.json")):
        try:
            raw = orjson.loads(path.read_bytes())
            entry = WorkerEntry(int(raw["pid"]), str(raw["host"]), str(raw["url"]), str(raw["prefix"]),
                                [str(s) for s in raw["stages"]], raw.get("run"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written by an older version, or removed meanwhile
        if entry.prefix == settings.kafka.topic_prefix and process_alive(entry.pid, entry.host):
            entries.append(entry)
    return entries
