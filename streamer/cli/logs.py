"""Logging set-up for the command line: our lines as they are, the Kafka client's repeats thinned.

aiokafka logs every failed connection attempt and fetch, several per second per client while a
broker is away (hundreds of lines a second in a worker with a dozen clients). The broker watch
says what matters once per interval; of aiokafka's own messages each distinct one is let
through once per `interval`, with a count of the ones held back.
"""

from __future__ import annotations

import logging
import sys
import time

REPEAT_INTERVAL = 30.0


class RepeatFilter(logging.Filter):
    """Lets each message template of loggers under `prefix` through once per `interval` seconds."""

    def __init__(self, prefix: str, interval: float = REPEAT_INTERVAL) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        if held := self._held.pop(key, 0):
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval:.0f}s not shown)"
        return True


def configure(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    # aiokafka logs every rebalance and retry at INFO/WARNING; ours say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    for noisy in ("httpx", "httpx2", "aiohttp.access", "sentence_transformers", "transformers", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # On the handlers: a logger's own filters do not see records its children propagate.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter("aiokafka"))
