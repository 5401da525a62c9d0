"""Child processes and loopback ports, for whatever runs a server beside the pipeline (the embedded
broker, Apache Kafka nodes, a local model server). Standard library only: CI uses it before any
package is installed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before it runs its program: be sent SIGTERM when the process that started it dies,
    however it dies (a server started in its own session would otherwise outlive a `kill -9`)."""
    with contextlib.suppress(Exception):  # Linux only; elsewhere the child is stopped by pid alone
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def stop_child(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM a child we started, SIGKILL it if it is not gone within `grace` seconds, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
