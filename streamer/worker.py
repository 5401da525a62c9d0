"""A worker process: some stages and/or the sink, one shared producer and LLM pool.

SIGTERM/SIGINT start a graceful stop: every member stops fetching, drains in-flight work
within `runtime.drain_timeout`, commits and leaves its group. With `until_idle` the worker
also stops once every member has caught up with its input and nothing is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Sequence

from streamer import metrics, metrics_server
from streamer.config import Settings
from streamer.kafka.clients import ensure_topics, make_producer
from streamer.kafka.consumer import GroupMember, sleep_until
from streamer.llm.cache import ResponseCache
from streamer.llm.client import LLMPool
from streamer.progress import Progress
from streamer.runner import StageRunner
from streamer.stage import Stage
from streamer.storage.sink import ParquetSink

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, stages: Sequence[Stage], *, sink: bool = True,
                 until_idle: bool = False, progress: bool = True) -> None:
        self.settings = settings
        self.stages = list(stages)
        self.with_sink = sink
        self.until_idle = until_idle
        self.show_progress = progress
        self.stop = asyncio.Event()
        self.members: list[GroupMember] = []

    async def run(self) -> None:
        await ensure_topics(self.settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        producer = make_producer(self.settings.kafka)
        await producer.start()
        cache = ResponseCache(self.settings.storage.cache_path) if self.stages else None
        pool = LLMPool(cache)
        self.members = [StageRunner(s, self.settings, producer, pool, self.stop) for s in self.stages]
        if self.with_sink:
            self.members.append(ParquetSink(self.settings, self.stop))
        metrics.declare_stages([s.name for s in self.stages])
        metrics_server.announce(self.settings, [m.name for m in self.members])  # so `status` finds us
        tasks = [asyncio.create_task(m.run(), name=m.name) for m in self.members]
        for task in tasks:
            task.add_done_callback(self._member_done)
        members_done = asyncio.Event()  # progress goes on through the drain that follows a stop
        helpers = [asyncio.create_task(self._watch_lag())]
        if self.show_progress:
            helpers.append(asyncio.create_task(Progress.of_members(self.members, _done_count).run(members_done)))
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.stop.set()
            members_done.set()
            # Helpers only observe; one waiting on a broker call must not hold up the exit.
            _, late = await asyncio.wait(helpers, timeout=2)
            for task in late:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await producer.stop()
            await pool.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: stopping intake, draining in-flight work", sig.name)
        self.stop.set()

    def _member_done(self, task: asyncio.Task[None]) -> None:
        # One member failing stops the others gracefully, so the process exits non-zero cleanly.
        if not task.cancelled() and task.exception() is not None:
            self.stop.set()

    async def _watch_lag(self) -> None:
        """Refresh lag for progress; with until_idle, stop after a quiet `idle_grace` period."""
        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        while not await sleep_until(self.stop, 0.5):
            lags = [await m.lag() for m in self.members]
            busy = any(lag is None or lag > 0 for lag in lags) or any(m.in_flight for m in self.members)
            if busy:
                quiet_since = None
                continue
            quiet_since = quiet_since or loop.time()
            if self.until_idle and loop.time() - quiet_since >= self.settings.runtime.idle_grace:
                log.info("all inputs consumed and nothing in flight: stopping")
                self.stop.set()


def _done_count(name: str) -> float:
    if name == "sink":
        return metrics.total(metrics.SINK_ROWS)
    return metrics.total(metrics.RECORDS_DONE, stage=name)
