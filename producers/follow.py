"""Following the feeder's inputs (`feed --follow`): everything present now, then new files in
followed directories and what is appended to followed files of a format that registers a tail
(JSON lines: producers.formats.jsonl), until stopped. The blocking
readers run in worker threads a batch at a time, so the event loop stays free."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Iterator

from producers.formats import Tail, format_of, read_file
from producers.items import BadInput, FeedItem, Item, ReadOptions
from producers.paths import STDIN, read_path, supported_files

_BATCH_ITEMS = 256
_BATCH_CHARS = 8_000_000


def _take(items: Iterator[Item]) -> list[Item]:
    """The next batch of items, bounded by count and text size so that it stays small."""
    batch: list[Item] = []
    chars = 0
    for item in items:  # breaking out does not close the generator: the next call resumes it
        batch.append(item)
        chars += len(item.text) if isinstance(item, FeedItem) else 0
        if len(batch) >= _BATCH_ITEMS or chars >= _BATCH_CHARS:
            break
    return batch


async def _in_thread(items: Iterator[Item], stop: asyncio.Event) -> AsyncIterator[Item]:
    """Runs a blocking reader in a worker thread a batch at a time, so the event loop stays free."""
    while not stop.is_set() and (batch := await asyncio.to_thread(_take, items)):
        for item in batch:
            yield item


async def _stdin_in_thread(opts: ReadOptions, stop: asyncio.Event) -> AsyncIterator[Item]:
    """stdin is read by a daemon thread rather than the default executor: a read blocked on an
    idle terminal or pipe must not keep the process from exiting once the feed is stopped."""
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue[list[Item]] = asyncio.Queue(maxsize=2)  # back-pressure on the reader

    def put(batch: list[Item]) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(batches.put(batch), loop).result()
            return True
        except (RuntimeError, concurrent.futures.CancelledError):  # the loop has gone away
            return False

    def pump() -> None:
        items = read_path(STDIN, opts)
        try:
            while (batch := _take(items)) and put(batch):
                pass
        finally:
            put([])  # end of input

    threading.Thread(target=pump, name="synthstream-stdin", daemon=True).start()
    while not stop.is_set() and (batch := await batches.get()):
        for item in batch:
            yield item


class _DirWatcher:
    """A directory followed for new files. Each file is read once: at start if present, else
    once its size and mtime are the same at two polls in a row (a writer may still be filling
    it). Files changed after being read are not read again."""

    def __init__(self, root: str, opts: ReadOptions) -> None:
        self.root = root
        self.opts = opts
        self.seen: set[str] = set()
        self.pending: dict[str, tuple[int, int]] = {}  # new file -> (size, mtime) at last poll

    def initial(self) -> Iterator[Item]:
        for path, fmt in supported_files(self.root):
            self.seen.add(path)
            yield from read_file(path, fmt, self.opts)

    def poll(self) -> Iterator[Item]:
        present: set[str] = set()
        for path, fmt in supported_files(self.root):
            present.add(path)
            if path not in self.seen and self._settled(path):
                self.seen.add(path)
                yield from read_file(path, fmt, self.opts)
        for gone in self.pending.keys() - present:
            del self.pending[gone]

    def _settled(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:  # vanished between the walk and now
            return False
        signature = (st.st_size, st.st_mtime_ns)
        if self.pending.get(path) == signature:
            del self.pending[path]
            return True
        self.pending[path] = signature
        return False


_Watcher = _DirWatcher | Tail


def _watcher(path: str, opts: ReadOptions) -> _Watcher | None:
    if os.path.isdir(path):
        return _DirWatcher(path, opts)
    fmt = format_of(path) if os.path.isfile(path) else None
    if fmt is not None and fmt.tail is not None and fmt.follows(path):
        return fmt.tail(path, opts)
    return None  # read once: stdin, gzip files, formats without a tail (Parquet, documents), missing paths


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    return stop.is_set()


async def follow_paths(paths: list[str], opts: ReadOptions, poll_interval: float = 1.0,
                       stop: asyncio.Event | None = None) -> AsyncIterator[FeedItem | BadInput]:
    """Everything present now (as read_paths), then what appears later, until `stop` is set:
    new files in followed directories and lines appended to followed JSONL files. Ends by
    itself only if nothing given can be followed."""
    stop = stop or asyncio.Event()
    watchers: list[_Watcher] = []
    for path in paths:
        if path == STDIN:
            items = _stdin_in_thread(opts, stop)
        elif (watcher := _watcher(path, opts)) is not None:
            watchers.append(watcher)
            items = _in_thread(watcher.initial(), stop)
        else:
            items = _in_thread(read_path(path, opts), stop)
        async for item in items:
            yield item
        if stop.is_set():
            return
    while watchers and not await _stopped_within(stop, poll_interval):
        for watcher in watchers:
            async for item in _in_thread(watcher.poll(), stop):
                yield item
