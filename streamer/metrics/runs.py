"""Counters that outlive a worker: each worker run's cumulative LLM counters, kept on disk.

Prometheus counters start at 0 in every process, so summing live workers' scrapes forgets every
worker that has stopped. A worker process (with or without a metrics endpoint) therefore writes
its counters per stage (and what its stalled stages wait for) to
`<data_dir>/workers/runs/<run id>.json` every `WRITE_EVERY` seconds and once more when it ends
(`finished: true`; at exit, or when its endpoint stops). A SIGKILLed worker loses at most the last
`WRITE_EVERY` seconds of counts.

`status` adds up: finished and dead runs' last totals + live workers' scrapes (a live worker's
own file is skipped when its scrape answered, so nothing is counted twice). So that many
restarts do not leave many files, finished runs are folded into one `totals-<prefix>.json` under
a lock (`fold_finished`); the folded runs' ids are kept there until their files are gone, so a
fold interrupted between writing the totals and removing the files never counts a run twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY

from streamer.config import Settings
from streamer.locks import process_alive, try_lock, unlock, write_atomically
from streamer.metrics import REQUEST_OUTCOMES

log = logging.getLogger(__name__)

WRITE_EVERY = 2.0  # seconds between writes: what a SIGKILL can lose
COUNTERS = ("requests", "rate_limited", "cache_hits", "tokens", "limiter_wait_s", "truncated", "invalid",
            "context_exceeded", "reasks", "cost_usd", "batch_cost_usd")
# Request outcomes counted apart, by the name they have among the counters.
OUTCOME_COUNTERS = {"rate_limited": "rate_limited", "cache_hit": "cache_hits", "truncated": "truncated",
                    "invalid_output": "invalid", "context_exceeded": "context_exceeded", "reask": "reasks"}
WAITING: dict[str, str] = {}  # stage -> what it waits for now (set by progress), written with the counters
# stage -> how it fares (streamer.runtime.outcomes.Outcome: records given, dead-lettered, idle), written
# with the counters, so a stage in another process can tell that a table it waits for will stay empty.
OUTCOMES: dict[str, Any] = {}


def runs_dir(settings: Settings) -> Path:
    return settings.storage.data_dir / "workers" / "runs"


def stage_counters(stages: list[str]) -> dict[str, dict[str, float]]:
    """This process's cumulative LLM counters per stage (one pass over the registry)."""
    out = {stage: dict.fromkeys(COUNTERS, 0.0) for stage in stages}
    wanted = {"synthstream_llm_requests_total", "synthstream_llm_tokens_total",
              "synthstream_llm_limiter_wait_seconds_total", "synthstream_llm_cost_usd_total"}
    for family in REGISTRY.collect():
        for sample in family.samples:
            mine = out.get(sample.labels.get("stage", "")) if sample.name in wanted else None
            if mine is not None:
                for key in _counted_as(sample.name, sample.labels.get("outcome"), sample.labels.get("lane")):
                    mine[key] += sample.value
    return out


def _counted_as(name: str, outcome: str | None, lane: str | None = None) -> list[str]:
    if name == "synthstream_llm_cost_usd_total":
        return ["cost_usd", "batch_cost_usd"] if lane == "batch" else ["cost_usd"]
    if name == "synthstream_llm_tokens_total":
        return ["tokens"]
    if name == "synthstream_llm_limiter_wait_seconds_total":
        return ["limiter_wait_s"]
    keys = ["requests"] if outcome in REQUEST_OUTCOMES else []
    return keys + ([OUTCOME_COUNTERS[outcome]] if outcome in OUTCOME_COUNTERS else [])


def add_counters(into: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    for stage, counters in more.items():
        mine = into.setdefault(stage, dict.fromkeys(COUNTERS, 0.0))
        for key in COUNTERS:
            mine[key] = mine.get(key, 0.0) + float(counters.get(key, 0.0))


class RunFile:
    """This process's run file, rewritten by a daemon thread until `close`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self.run_id = f"{os.getpid()}-{int(self.started * 1000)}"
        self.path = runs_dir(settings) / f"{self.run_id}.json"
        self.stages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-counters", daemon=True)

    def start(self, stages: list[str]) -> None:
        self.stages = sorted(set(self.stages) | set(stages))  # demo runs workers in turn: keep them all
        if not self._thread.is_alive() and not self._stop.is_set():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fold_finished(self.settings)  # runs killed since the last fold
            self._thread.start()
        self.write()

    def close(self) -> None:
        """The last totals, then finished runs folded (once: at the endpoint's stop or at exit)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.write(finished=True):
            fold_finished(self.settings)

    def _loop(self) -> None:
        while not self._stop.wait(WRITE_EVERY) and self.write():
            pass

    def write(self, finished: bool = False) -> bool:
        entry = {"run": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                 "prefix": self.settings.kafka.topic_prefix, "started": self.started, "updated": time.time(),
                 "finished": finished, "stages": stage_counters(self.stages),
                 "waiting": {} if finished else {s: w for s, w in WAITING.items() if s in self.stages},
                 "outcomes": {s: o.snapshot() for s, o in list(OUTCOMES.items()) if s in self.stages}}
        try:
            write_json(self.path, entry)
            return True
        except OSError as exc:  # a full disk, or the data dir removed: the worker goes on, status shows less
            log.warning("could not write the run counters to %s (%s); no longer written", self.path, exc)
            return False


_runs: dict[tuple[Path, str], RunFile] = {}


def run_of(settings: Settings) -> RunFile:
    """This process's run for a data dir and topic prefix (one per process: `demo` runs workers in turn)."""
    key = (settings.storage.data_dir, settings.kafka.topic_prefix)
    if key not in _runs:
        _runs[key] = RunFile(settings)
        atexit.register(_runs[key].close)
    return _runs[key]


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, orjson.dumps(value))  # readers never see half a file


# Reading and folding --------------------------------------------------------------------------
def run_files(settings: Settings) -> Iterator[tuple[Path, dict[str, Any]]]:
    """This pipeline's (same topic prefix) run files, readable ones only."""
    for path in sorted(runs_dir(settings).glob("*.json")):
        if path.name.startswith("totals-"):
            continue
        try:
            raw = orjson.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed by a fold meanwhile
        if isinstance(raw, dict) and raw.get("prefix") == settings.kafka.topic_prefix:
            yield path, raw


def totals_path(settings: Settings) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.kafka.topic_prefix) or "_"
    return runs_dir(settings) / f"totals-{safe}.json"


def read_totals(settings: Settings) -> dict[str, Any]:
    try:
        raw = orjson.loads(totals_path(settings).read_bytes())
        return {"stages": dict(raw["stages"]), "folded": list(raw["folded"]), "runs": int(raw["runs"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"stages": {}, "folded": [], "runs": 0}


def fold_finished(settings: Settings) -> None:
    """Fold finished (or dead) runs into the totals file and remove their files; skipped when
    another process folds right now (it does the same work)."""
    lock_path = runs_dir(settings) / ".fold.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a")  # noqa: SIM115 - held until unlock
    if not try_lock(handle):
        return
    try:
        totals = read_totals(settings)
        files = list(run_files(settings))
        existing = {raw.get("run") for _, raw in files}
        folded = {r for r in totals["folded"] if r in existing}  # ids of removed files are no longer needed
        done = [(path, raw) for path, raw in files if run_is_over(raw)]
        for _, raw in done:
            if raw.get("run") not in folded:
                add_counters(totals["stages"], raw.get("stages") or {})
                totals["runs"] += 1
                folded.add(raw.get("run"))
        write_json(totals_path(settings), {**totals, "folded": sorted(folded)})
        for path, _ in done:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not fold finished worker runs: %s", exc)
    finally:
        unlock(handle)


def run_is_over(raw: dict[str, Any]) -> bool:
    """Finished, or its process is gone (same host only: elsewhere a pid means nothing here)."""
    try:
        pid = int(raw.get("pid", 0))
    except (TypeError, ValueError):
        return False
    return bool(raw.get("finished")) or not process_alive(pid, raw.get("host"))


def live_outcomes(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Per stage, how it fares in each worker run of this pipeline that is not over (from their files)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, raw in run_files(settings):
        if not run_is_over(raw) and isinstance(raw.get("outcomes"), dict):
            for stage, outcome in raw["outcomes"].items():
                if isinstance(outcome, dict):
                    out.setdefault(stage, []).append(outcome)
    return out


def counted_runs(settings: Settings, live_scraped: set[str]) -> tuple[dict[str, dict[str, float]], int, dict]:
    """Per stage counters of every run except the live ones whose scrape answered, how many runs
    that is, and the waiting lines of runs that are not over."""
    totals = read_totals(settings)
    counters: dict[str, dict[str, float]] = {}
    add_counters(counters, totals["stages"])
    runs, waiting = totals["runs"], {}
    folded = set(totals["folded"])
    for _, raw in run_files(settings):
        run = raw.get("run")
        if run in folded:
            continue
        over = run_is_over(raw)
        if not over:
            waiting.update(raw.get("waiting") or {})
        if run in live_scraped:
            continue
        add_counters(counters, raw.get("stages") or {})
        runs += over
    return counters, runs, waiting
