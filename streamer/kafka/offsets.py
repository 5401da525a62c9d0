"""Offset bookkeeping for out-of-order completion.

Records of one partition finish in any order (LLM calls take varying time); Kafka can only
store one committed offset per partition. So we commit the end of the contiguous prefix of
finished offsets: everything below it is done, anything at or above it is redelivered after a
crash (at-least-once, made effectively-once by deterministic ids and an idempotent sink).
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # offsets started, in arrival (= offset) order
        self._done: set[int] = set()
        self.committable: int | None = None  # next offset to consume after the finished prefix
        self.committed: int | None = None

    def started(self, offset: int) -> None:
        self._pending.append(offset)

    def finished(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            first = self._pending.popleft()
            self._done.discard(first)
            self.committable = first + 1

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def to_commit(self) -> int | None:
        """The offset to commit if it moved since the last commit, else None."""
        if self.committable is not None and self.committable != self.committed:
            return self.committable
        return None
