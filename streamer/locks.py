"""Files more than one process touches: one writer per file (an exclusive, non-blocking lock held
for as long as the file is open), whole files only (written under a temporary name and renamed into
place), and whether the process a file names (by pid) is still there."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path
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


def process_alive(pid: int, host: str | None = None) -> bool:
    """Whether process `pid` runs. A pid only means something on its own machine: one recorded on
    another host (a shared volume) is taken as alive, and the caller's other checks decide."""
    if host is not None and host != socket.gethostname():
        return True
    if pid <= 0:  # os.kill(0, …) would mean this process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, run by another user
        return True
    return True


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, written under a temporary name in the same directory and renamed into place:
    a reader, or a process writing the same file at the same time, never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o644)  # readable by others, as a plain write would leave it (mkstemp: 0600)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
