"""One writer per file: an exclusive, non-blocking lock held for as long as the file is open."""

from __future__ import annotations

import fcntl
from typing import IO, Any


def try_lock(handle: IO[Any]) -> bool:
    """Lock `handle` exclusively without waiting. False, with the file closed, when another
    process holds it (the lock goes with the process, so a crashed writer never leaves it behind)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    return True


def unlock(handle: IO[Any]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
