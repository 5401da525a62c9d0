"""Live progress of a feed: items read, what is left and an ETA when the inputs can be counted
cheaply (producers.paths.count_items, in the background)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from producers.feed_report import FeedReport
from producers.paths import count_items
from streamer.runtime.progress import Progress, Snapshot


@contextlib.asynccontextmanager
async def feed_progress(report: FeedReport, kind: str, finite_paths: list[str] | None) -> AsyncIterator[None]:
    """Live progress of a feed; with finite inputs, their item count (learnt in the background,
    when cheap) gives what is left and an ETA."""
    total: int | None = None
    cancelled = threading.Event()

    async def count() -> None:
        nonlocal total
        total = await asyncio.to_thread(count_items, finite_paths, cancelled)

    def snapshot() -> list[Snapshot]:
        left = max(0, total - report.read) if total is not None else None
        note = (f"{report.sent} sent, {report.duplicates} duplicates, {report.finished} finished before, "
                f"{len(report.bad)} bad, {report.skipped.total()} not documents, {report.rejected.total()} rejected")
        return [Snapshot(f"feed {kind}", report.read, left=left, note=note)]

    done = asyncio.Event()
    counting = asyncio.create_task(count()) if finite_paths else None
    ticker = asyncio.create_task(Progress(snapshot).run(done))
    try:
        yield
    finally:
        cancelled.set()  # a count still running is of no use any more
        done.set()
        await asyncio.gather(*(t for t in (counting, ticker) if t is not None), return_exceptions=True)
