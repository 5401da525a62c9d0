"""Sentence embeddings with the real encoder, loaded offline when the model ships as a package.

One encoder per process and model, shared by every stage that needs it; encoding runs in a
worker thread so the event loop (and with it the Kafka consumer) keeps going.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Where the weights come from (installed package, or fetched once into the cache) lives beside the cache.
from streamer.runtime.model_files import DEFAULT_MODEL, model_location  # noqa: E402  (re-exported)


class EncoderUnavailable(RuntimeError):
    """The model cannot be loaded by the ONNX encoder and sentence-transformers is not installed."""


class Encoder:
    """One sentence encoder, shared by every caller in the process through a scheduler.

    Callers await `encode(texts)`. While the encoder is busy their texts gather; the next encoder
    call takes everything gathered (up to `gather_limit` texts), so a caller with one text is not
    served in a batch of one while hundreds wait, and callers of different stages share batches.

    Calls run on `workers` threads (one per core, at most two), each computing its own batch on its
    own thread (ONNX Runtime with no thread pool of its own): two batches at once cost no more CPU
    than one after the other, and a small batch (a document waiting for its examples) need not wait
    behind a large one (a thousand instructions for dedup).
    """

    def __init__(self, name: str = DEFAULT_MODEL, gather_limit: int = 1024, batch_size: int = 16,
                 workers: int | None = None) -> None:
        self.name = name
        self.location: str | None = None  # resolved at load: fetching the weights may take a while
        self.gather_limit = gather_limit
        self.batch_size = batch_size
        self.workers = workers or max(1, min(2, os.cpu_count() or 1))
        self._model = None
        self._lean = False  # the model is a streamer.runtime.bert.OnnxBert, not a SentenceTransformer
        self._loading = threading.Lock()
        # Dedicated threads: each new calling thread would get its own OpenMP team, and idle
        # teams spin against the working one (measured: ~10% slower through a thread pool).
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="encoder")
        # Waiting requests by kind: exact (kept vectors) and fast (vectors that only choose).
        self._waiting: dict[bool, collections.deque[_Request]] = {False: collections.deque(), True: collections.deque()}
        self._scheduler: asyncio.Task[None] | None = None
        self.stats = EncoderStats()

    def _load(self):
        with self._loading:
            return self._load_once()

    def _load_once(self):
        if self._model is None:
            started = time.monotonic()
            if self.location is None:
                self.location = model_location(self.name)
            from streamer.runtime.bert import lean_model

            # The ONNX encoder answers None for any model it does not reproduce exactly.
            model = lean_model(self.location)
            self._lean = model is not None  # set before _model: other threads read both after a load
            if model is None:
                model = self._sentence_transformer()
            self._model = model
            loader = "ONNX Runtime" if self._lean else "sentence-transformers"
            log.info("encoder %s loaded from %s in %.1fs (%s)", self.name, self.location,
                     time.monotonic() - started, loader)
        return self._model

    def _sentence_transformer(self):
        """The fallback for models the ONNX encoder does not build (the `[torch]` extra)."""
        if Path(self.location).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy must not reach for the hub
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EncoderUnavailable(
                f"encoder model {self.name!r} ({self.location}) is not a mean-pooled BERT model that the "
                "ONNX encoder builds; other models need sentence-transformers: pip install 'synthstream[torch]'"
            ) from exc
        import torch

        torch.set_num_threads(1)  # batches run side by side on the encoder's threads instead
        self.workers = 1  # sentence-transformers' encode is not known to be safe in two threads
        return SentenceTransformer(self.location, device="cpu")

    def warm(self) -> None:
        """Load the model in an encoder thread now, so the first record does not wait for it."""
        self._threads.submit(self._load)

    @property
    def dimension(self) -> int:
        model = self._load()
        if self._lean:
            return int(model.dimension)
        # Renamed in sentence-transformers 6 (the old name still works there, with a warning).
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def encode_sync(self, texts: list[str], batch_size: int | None = None, fast: bool = False) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (`fast`: see `encode`)."""
        model = self._load()
        cpu = time.thread_time()
        vectors = self._run_model(model, texts, batch_size or self.batch_size, fast)
        self.stats.add(len(texts), time.thread_time() - cpu)
        return np.asarray(vectors, dtype=np.float32)

    def _run_model(self, model, texts: list[str], batch_size: int, fast: bool) -> np.ndarray:
        """Either loader's encode; the lean one always returns unit-length rows."""
        if self._lean:
            return model.encode(texts, batch_size=batch_size, fast=fast)
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    async def encode(self, texts: list[str], *, fast: bool = False) -> np.ndarray:
        """Vectors for `texts`, encoded together with whatever else is waiting in the process.
        `fast`: for choosing, not for keeping (nearest examples): served in small calls after the
        exact requests; the vectors themselves are the exact ones (see bert.OnnxBert.encode)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting[fast].append(_Request(list(texts), fast, future))
        if self._scheduler is None or self._scheduler.done() or self._scheduler.get_loop() is not loop:
            self._scheduler = loop.create_task(self._run_batches())
        return await future

    async def _run_batches(self) -> None:
        running: set[asyncio.Future[None]] = set()
        while self._any_waiting or running:
            while self._any_waiting and len(running) < self.workers:
                running.add(asyncio.ensure_future(self._run_batch(self._take())))
            _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    def _take(self) -> list[_Request]:
        """Exact requests first, else fast ones, oldest first, up to `gather_limit` texts; the rest
        stay for the next call. Exact vectors are kept (embed, for dedup): a record waits for them.
        Fast ones only choose (situation's examples), ahead of the record's LLM call (Stage.prepare),
        so they can wait a little."""
        fast = not self._waiting[False]
        queue = self._waiting[fast]
        # Choosing requests come in floods (every record prepared ahead at once) and each waits for
        # its own vector: small calls serve them sooner. Exact ones gather up to the limit, which a
        # steady stream never reaches (a call's texts arrive while the previous call runs).
        limit = min(FAST_GATHER, self.gather_limit) if fast else self.gather_limit
        taken = [queue.popleft()]
        size = len(taken[0].texts)
        while queue and size + len(queue[0].texts) <= limit:
            taken.append(queue.popleft())
            size += len(taken[-1].texts)
        return taken

    @property
    def _any_waiting(self) -> bool:
        return bool(self._waiting[False] or self._waiting[True])

    async def _run_batch(self, taken: list[_Request]) -> None:
        texts = [text for request in taken for text in request.texts]
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._threads, self.encode_sync, texts, None, taken[0].fast)
        except Exception as exc:  # noqa: BLE001 - every waiter of this batch learns of it
            for request in taken:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        start = 0
        for request in taken:
            if not request.future.done():
                request.future.set_result(vectors[start:start + len(request.texts)])
            start += len(request.texts)


@dataclass
class _Request:
    texts: list[str]
    fast: bool
    future: asyncio.Future[np.ndarray]


class EncoderStats:
    """Texts encoded, encoder calls and the encoder thread's CPU seconds (bench/pipeline.py prints them)."""

    def __init__(self) -> None:
        self.texts = 0
        self.calls = 0
        self.cpu_seconds = 0.0
        self._lock = threading.Lock()

    def add(self, texts: int, cpu_seconds: float) -> None:
        with self._lock:  # from the encoder's threads
            self.texts += texts
            self.calls += 1
            self.cpu_seconds += cpu_seconds


FAST_GATHER = 32  # most texts per call of `fast` (choosing) requests

_ENCODERS: dict[str, Encoder] = {}


def shared_encoder(name: str = DEFAULT_MODEL) -> Encoder:
    """One encoder per model and process, however the name is passed."""
    if name not in _ENCODERS:
        _ENCODERS[name] = Encoder(name)
    return _ENCODERS[name]


def encoder_summaries() -> list[str]:
    """One line per encoder this process used: what it encoded and the CPU it took."""
    return [f"encoder {e.name}: {e.stats.texts} texts in {e.stats.calls} calls, {e.stats.cpu_seconds:.1f}s CPU"
            for e in _ENCODERS.values() if e.stats.calls]


def pack_vector(vector: np.ndarray) -> str:
    """A unit vector as base64 float16: 768 bytes → 1 KB of JSON for MiniLM, half of float32."""
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def unpack_vector(packed: str) -> np.ndarray:
    vector = np.frombuffer(base64.b64decode(packed), dtype=np.float16).astype(np.float32)
    # Renormalise: float16 rounding moves the norm slightly off 1.
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
