"""Is the broker there, and is it still the one this process started with?

A worker's consumers and producer retry on their own, forever and loudly. The watch asks the
broker itself, once a second over a connection of its own, and decides for the whole process:

- unreachable: one log line every `REPORT_EVERY` seconds while it lasts; after
  `kafka.unavailable_timeout` it gives up with `BrokerUnavailable` (the worker exits non-zero);
- reachable again in time: one line, and the work goes on;
- a topic of the pipeline recreated (new topic id, or gone): `BrokerReplaced` at once. The
  process's positions and in-flight work belong to the old topics; committing them to the new
  ones would skip or repeat records, so the worker stops without committing and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, TypeVar

from aiokafka.errors import KafkaError

from streamer.config import Settings
from streamer.kafka.incarnation import TopicIdentity, short

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_EVERY = 1.0
REPORT_EVERY = 10.0


class BrokerUnavailable(RuntimeError):
    """The broker did not answer for `kafka.unavailable_timeout` seconds."""


class BrokerReplaced(RuntimeError):
    """The topics this process works on were recreated under it (e.g. the broker restarted empty)."""


BROKER_VERDICTS = (BrokerUnavailable, BrokerReplaced)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


class BrokerWatch:
    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.settings = settings
        self.topics = topics  # full names
        self.identity = TopicIdentity(settings)
        self.servers = settings.kafka.bootstrap_servers
        self.timeout = settings.kafka.unavailable_timeout
        self.baseline: dict[str, str] = {}
        self.failure: BaseException | None = None
        self.reachable = asyncio.Event()
        self.away = asyncio.Event()  # the last check failed (the opposite of `reachable`, to wait on)
        self.failed = asyncio.Event()
        self._checking = asyncio.Lock()  # one probe at a time: they share a connection
        self._down_since: float | None = None
        self._last_report = 0.0

    async def connect(self, stop: asyncio.Event) -> dict[str, str] | None:
        """Wait until the broker answers (reporting, giving up after the timeout, returning None
        early when `stop` is set); then remember the topics' incarnations."""
        while not stop.is_set():
            ids = await self._check()
            if ids is not None:
                self.baseline = ids
                return ids
            if self.failure is not None:
                raise self.failure
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_EVERY)
        return None

    @property
    def cluster_id(self) -> str | None:
        return self.identity.probe.cluster_id

    async def run(self) -> None:
        """Check until cancelled (through a shutdown too: it decides how long that may wait for
        the broker); on a verdict, set `failed` (and `failure`) and return."""
        try:
            while self.failure is None:
                await asyncio.sleep(CHECK_EVERY)
                async with self._checking:
                    ids = await self._check()
                    if ids is not None:
                        self._compare(ids)
        finally:
            self.identity.close()

    async def recheck(self) -> None:
        """Check now, e.g. after a client error that a replaced broker would explain; raises the
        verdict if there is one, so the caller reports that instead of its error."""
        if self.failure is None:
            async with self._checking:
                ids = await self._check()
                if ids is not None:
                    self._compare(ids)
        if self.failure is not None:
            raise self.failure

    async def unless_away(self, call: Awaitable[T], timeout: float | None = None) -> T:
        """Await `call`, giving it up (TimeoutError) after `timeout` or as soon as the broker is
        found away: a Kafka client call would otherwise wait out its own, long, retries."""
        task = asyncio.ensure_future(call)
        away = asyncio.ensure_future(self.away.wait())
        try:
            await asyncio.wait({task, away}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            away.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise asyncio.TimeoutError("the broker is away" if self.away.is_set() else "no answer in time")
        return task.result()

    def watch(self, topics: list[str]) -> None:
        """Also watch these topics (their incarnation is taken at the next check)."""
        self.topics = sorted(set(self.topics) | set(topics))

    async def wait_reachable(self, stop: asyncio.Event) -> bool:
        """True once the broker answers, False if `stop` comes first; raises the verdict if the
        watch gave up."""
        if self.reachable.is_set():
            return True
        waits = [asyncio.ensure_future(e.wait()) for e in (self.reachable, self.failed, stop)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self.failure is not None:
            raise self.failure
        return self.reachable.is_set()

    async def _check(self) -> dict[str, str] | None:
        try:
            ids = await self.identity.of(self.topics, fresh=True)
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            self._unreachable(exc)
            return None
        if self._down_since is not None:
            log.warning("kafka: broker %s answers again after %.0fs", self.servers, time.monotonic() - self._down_since)
        self._down_since = None
        self.away.clear()
        self.reachable.set()
        return ids

    def _unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.reachable.clear()
        self.away.set()
        if self._down_since is None:
            self._down_since = now
            self._last_report = 0.0
        down = now - self._down_since
        if down >= self.timeout:
            self._fail(BrokerUnavailable(
                f"Kafka broker {self.servers} unreachable for {down:.0f}s (kafka.unavailable_timeout "
                f"{self.timeout:.0f}s): {_reason(exc)}. Unfinished work is redelivered when workers run again; "
                f"if the broker was the embedded one, it kept nothing: see `synthstream feed --help` (--resume)"))
        elif now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            log.warning("kafka: broker %s unreachable%s (%s); giving up after %.0fs", self.servers,
                        f" for {down:.0f}s" if down >= 1 else "", _reason(exc), self.timeout)

    def _compare(self, ids: dict[str, str]) -> None:
        for topic in self.topics:
            if topic not in self.baseline:
                if topic in ids:  # watched later, or created since: this is its first incarnation for us
                    self.baseline[topic] = ids[topic]
                continue
            now = ids.get(topic)
            if now != self.baseline[topic]:
                what = "is gone" if now is None else (f"was recreated (incarnation {short(self.baseline[topic])} "
                                                      f"-> {short(now)})")
                self._fail(BrokerReplaced(
                    f"topic {topic} on {self.servers} {what}: the broker restarted empty or the topic was "
                    f"deleted. This process's offsets and in-flight work belong to the old topic, so it stops "
                    f"without committing; stored results are kept. Feed again (finished documents are skipped) "
                    f"and start the workers"))
                return

    def _fail(self, failure: BaseException) -> None:
        if self.failure is None:
            self.failure = failure
            log.error("%s", failure)
        self.failed.set()
