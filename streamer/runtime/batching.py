"""Micro-batching: many concurrent records, one call per batch (encoders and index searches are
far cheaper per item in batches). Items are handled in the order they were submitted."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(self, handle: Callable[[list[T]], Awaitable[list[R]]], max_size: int = 64,
                 max_wait: float = 0.01) -> None:
        self.handle = handle
        self.max_size = max_size
        self.max_wait = max_wait
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # batches run one at a time, in submission order

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue an item now (no await before it is queued, so order is the caller's order)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_size:
            self._start_flush()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return future

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.max_wait)
        self._flusher = None
        await self._flush()

    def _start_flush(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        async with self._lock:
            # The batch is cut only once the previous one is done: what arrived meanwhile joins it,
            # instead of a busy handler being fed batches of one.
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size:]
            if self._pending and self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_later())
            if not batch:
                return
            try:
                results = await self.handle([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter learns of the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
