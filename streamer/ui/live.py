"""The pipeline's figures, live: one `Sampler` (the one `synthstream status` uses) sampled every few
seconds, the newest figures kept and pushed to every open page as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from streamer.config import Settings
from streamer.ops.status import Status
from streamer.ops.status.sample import Sampler
from streamer.ui.topics import any_simulated

log = logging.getLogger(__name__)
RETRY_AFTER_S = 3.0  # after the broker did not answer a sample
SIMULATED_EVERY = 2  # until simulated records are seen, look every this many samples (reads a few topics' ends)
KEEPALIVE_S = 15.0  # a comment line so proxies and browsers keep an idle stream open


class LiveStatus:
    """Samples while the server runs; `figures` is the newest, `changed` wakes the streams."""

    def __init__(self, settings: Settings, interval: float = 2.0) -> None:
        self.settings = settings
        self.interval = interval
        self.figures: dict[str, Any] = {"pending": True, "stages": []}
        self.changed = asyncio.Condition()
        self.simulated = False
        self.version = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop`; a broker that does not answer is shown as an error and retried."""
        while not stop.is_set():
            try:
                await self._sample_until(stop)
            except Exception as exc:  # noqa: BLE001 - aiokafka raises its own kinds; the console stays up
                log.warning("ui: status sample failed: %r", exc)
                await self._publish({"error": f"{type(exc).__name__}: {exc}", "stages": [], "time": time.time()})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_AFTER_S)

    async def _sample_until(self, stop: asyncio.Event) -> None:
        async with Sampler(self.settings) as sampler:
            before = await sampler.sample()
            ticks = 0
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
                if stop.is_set():
                    return
                now = await sampler.sample()
                if not self.simulated and ticks % SIMULATED_EVERY == 0:
                    self.simulated = await any_simulated(self.settings)  # once simulated, always so
                ticks += 1
                await self._publish(self._payload(Status.between(sampler, before, now)))
                before = now

    def _payload(self, status: Status) -> dict[str, Any]:
        return {**status.to_json(), "warnings": status.notes(), "simulated": self.simulated}

    async def wake(self) -> None:
        """Let every open stream see that the server stops."""
        async with self.changed:
            self.changed.notify_all()

    async def _publish(self, figures: dict[str, Any]) -> None:
        async with self.changed:
            self.figures = figures
            self.version += 1
            self.changed.notify_all()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /api/live: the newest figures now, then each new sample, as `data:` events."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the page was closed or left: its stream ends here
            await self._send_until_stopped(response, request.app["stopping"])
        return response

    async def _send_until_stopped(self, response: web.StreamResponse, stopping: asyncio.Event) -> None:
        seen = -1
        while not stopping.is_set():
            if seen != self.version:
                seen = self.version
                await response.write(b"data: " + orjson.dumps(self.figures) + b"\n\n")
                continue
            async with self.changed:
                try:
                    news = lambda seen=seen: seen != self.version or stopping.is_set()
                    await asyncio.wait_for(self.changed.wait_for(news), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
