"""Shared fixtures: one real embedded broker per test session, LLM simulators as real HTTP
servers in their own processes, and an isolated pipeline (topic prefix + data dir) per test.
Every process started here is stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from streamer.config import Settings, load_settings
from streamer.kafka.apache import KafkaCluster, missing_tools
from streamer.kafka.broker import EmbeddedBroker
from streamer.processes import free_port, port_open
from streamer.llm import local_server

from helpers import CLI, stop_process, wait_for


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The one line, at the end of even a quiet run, that says why the Apache Kafka tests (or the
    real-model tests) were skipped."""
    if not terminalreporter.stats.get("skipped"):
        return
    reason = missing_tools()
    if reason:
        terminalreporter.write_line(f"Apache Kafka tests skipped: {reason}")
    if local_server.not_ready() and (reason := local_server.missing_tools() or local_server.earlier_failure()):
        terminalreporter.write_line(f"Real-model tests skipped: {reason}")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every test on the Apache Kafka cluster runs on one xdist worker (`--dist loadgroup`), so the
    session starts one 3-node cluster (three JVMs, ~1.2 GB) instead of one per worker. The tests of
    the README recipe on tansu share one worker too: the recipe (a module-scoped fixture) runs once;
    every test on the real model server likewise (one model in memory, and a CPU it does not share
    with itself).
    Marked as each item is collected, before any pytest_collection_modifyitems."""
    callspec = getattr(item, "callspec", None)
    # Asked for directly, or through a fixture with an engine parameter (`engine`, `recipe_engine`) set to kafka.
    on_kafka = ("kafka_cluster" in getattr(item, "fixturenames", ())
                or callspec is not None and any(name.endswith("engine") and value == "kafka"
                                                for name, value in callspec.params.items()))
    if on_kafka:
        item.add_marker(pytest.mark.xdist_group("apache-kafka"))
    elif "llama_server" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.xdist_group("llama-server"))  # one model server for the session
    elif callspec is not None and callspec.params.get("recipe_engine") == "tansu":
        item.add_marker(pytest.mark.xdist_group("readme-recipe"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist's loadgroup puts an item's group in its node id (`…@apache-kafka`), which the scheduler
    reads; xdist 3.8 writes it to `item._nodeid`, which pytest 9.2 no longer reads (the node id is
    `item._id`), so no group formed and every worker with a Kafka test started a cluster of its own.
    Done here after xdist, where it did not take."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # a pytest where xdist's own naming works
        return
    for item in items:
        groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group") if mark.args})
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")  # noqa: SLF001


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three Apache Kafka KRaft nodes (replication 3, min.insync.replicas 2), shared by the session
    (every test on it runs on the same xdist worker: pytest_collection_modifyitems)."""
    reason = missing_tools()
    if reason:
        pytest.skip(f"Apache Kafka tests skipped: {reason}")
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), size=3)
    cluster.start()
    yield cluster
    cluster.kill()  # its data goes with the session's temporary dir


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_server.LocalModelServer]:
    """llama-cpp-python's server of SmolLM2-135M-Instruct on loopback, shared by the session (its tests
    run on one xdist worker). Built and fetched here when `.ci/run` has not done it ahead (once: the
    build is cached); where that cannot be done, its tests are skipped with the reason."""
    try:
        local_server.prepare(retry_failed=False)
        server = local_server.LocalModelServer(tmp_path_factory.mktemp("llama-server")).start()
    except local_server.LocalServerUnavailable as exc:
        pytest.skip(f"Real-model tests skipped: {exc}")
    yield server
    server.stop()


@dataclass
class Simulator:
    url: str
    proc: subprocess.Popen


@pytest.fixture
def start_simulator(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> Simulator:
        sim = launch_simulator(tmp_path, *args)
        procs.append(sim.proc)
        return sim

    yield start
    for proc in procs:
        stop_process(proc)


def launch_simulator(workdir: Path, *args: str) -> Simulator:
    """A simulator process on a free port (its log in `workdir`); the caller stops it."""
    port = free_port()
    log = open(workdir / f"simulator-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*CLI, "simulate-llm", "--port", str(port), *args], stdout=log, stderr=log, cwd=workdir)
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 20, what="simulator")
        assert proc.poll() is None, (workdir / f"simulator-{port}.log").read_text()
    except AssertionError:
        stop_process(proc)
        raise
    return Simulator(f"http://127.0.0.1:{port}/v1", proc)


@dataclass
class Pipeline:
    """An isolated pipeline on the shared broker: own topic prefix, own data dir, own env."""

    prefix: str
    data_dir: Path
    env: dict[str, str]
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def feed(self, tmp_path: Path, docs: list[str], seeds: int) -> None:
        """Seeds and documents onto their topics through the CLI, as a user would."""
        from helpers import write_jsonl, write_seeds

        if seeds:
            self.cli("feed", "seeds", str(write_seeds(tmp_path / "seeds.jsonl", seeds)))
        self.cli("feed", "docs", str(write_jsonl(tmp_path / "docs.jsonl", docs)))

    @property
    def bootstrap_servers(self) -> str:
        return self.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]

    def settings(self) -> Settings:
        return load_settings(env=self.env)

    def cli(self, *args: str, timeout: float = 120, check: bool = True, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess:
        result = subprocess.run([*CLI, *args], env=self.env, cwd=self.workdir, capture_output=True,
                                timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"synthstream {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stderr.decode()[-4000:]}")
        return result

    def start(self, *args: str, name: str = "worker") -> subprocess.Popen:
        log = open(self.workdir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([*CLI, *args], env=self.env, cwd=self.workdir, stdout=log, stderr=log)
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def log_of(proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


@pytest.fixture(params=["tansu"])
def engine(request: pytest.FixtureRequest) -> str:
    """The broker `pipeline` runs on. A module runs its tests on both with
    `pytest.mark.parametrize("engine", helpers.ENGINES, indirect=True)`."""
    return request.param


@pytest.fixture
def pipeline(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    p = new_pipeline(request.getfixturevalue("kafka_cluster" if engine == "kafka" else "broker"), tmp_path)
    yield p
    for proc in p.procs:
        stop_process(proc, signal.SIGKILL)


@pytest.fixture
def kafka_pipeline(kafka_cluster: KafkaCluster, tmp_path: Path) -> Iterator[Pipeline]:
    """An isolated pipeline on the Apache Kafka cluster, its topics replicated three times."""
    p = new_pipeline(kafka_cluster, tmp_path)
    yield p
    for proc in p.procs:
        stop_process(proc, signal.SIGKILL)


def new_pipeline(broker: EmbeddedBroker | KafkaCluster, tmp_path: Path) -> Pipeline:
    """An isolated pipeline in `tmp_path` (also for module-scoped fixtures; they stop its processes)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env.update({
        "SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "SYNTHSTREAM_KAFKA__TOPIC_PREFIX": prefix,
        "SYNTHSTREAM_KAFKA__PARTITIONS": "4",
        "SYNTHSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "SYNTHSTREAM_STORAGE__SINK_FLUSH_INTERVAL": "0.5",
        "SYNTHSTREAM_RUNTIME__IDLE_GRACE": "0.5",
        "SYNTHSTREAM_RUNTIME__RETRY_BACKOFF": "0.05",
        "SYNTHSTREAM_LLM__MODEL": "synthstream-simulator",
        "SYNTHSTREAM_LLM__REQUESTS_PER_MINUTE": "6000",
        # Simulated rubric scores are random; keeping everything makes outcomes countable.
        "SYNTHSTREAM_STAGES__JUDGE__THRESHOLD": "0",
        # Simulated instructions for look-alike test documents are look-alikes too: only exact
        # duplicates are dropped, unless a test (test_dedup) sets the threshold itself.
        "SYNTHSTREAM_STAGES__DEDUP__THRESHOLD": "1.0",
        # The test documents are short look-alikes the feed's filters would reject; tests/test_filters.py
        # turns them on for its own pipeline.
        "SYNTHSTREAM_FEED__FILTERS__ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    })
    if isinstance(broker, KafkaCluster):
        # Kafka refuses sessions under group.min.session.timeout.ms (6 s). No replication factor: topics
        # get the cluster's default.replication.factor (3), as for a user who sets none.
        env.update({"SYNTHSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000", "SYNTHSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"})
    else:
        env.update({"SYNTHSTREAM_KAFKA__SESSION_TIMEOUT_MS": "2000", "SYNTHSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "500"})
    return Pipeline(prefix, data_dir, env, tmp_path)

