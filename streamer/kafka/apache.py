"""Apache Kafka as plain JVM processes: KRaft nodes on loopback ports, each with its own data dir.

Used by the tests and benchmarks (a 1- or 3-node cluster) and by `synthstream broker --engine kafka`
(one durable node). The broker settings come from deploy/kafka/ (cluster.properties, and for a
single node single-node.properties), the same files the deploy manifests are checked against.
The jars are Maven Central's `kafka_2.13`, copied once by Maven (deploy/kafka/pom.xml) into the
cache and found there afterwards. Every node is a combined broker+controller; each is started and
stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.kafka.broker import BrokerError, running
from streamer.processes import die_with_parent, free_port, port_open, stop_child
from streamer.user_cache import cache_dir

log = logging.getLogger(__name__)

DEPLOY_KAFKA = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY_KAFKA / "pom.xml"
HOST = "127.0.0.1"

# A small machine runs three of these next to the pipeline: a small heap, one GC thread, and
# fewer request threads than a production broker (they mostly sit idle here). Startup is
# dominated by class loading, so C1 alone (TieredStopAtLevel=1) starts faster on 2 cores.
JVM_OPTIONS = ("-Xms64m", "-Xmx320m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k",
               "-Djava.awt.headless=true", "-Dorg.slf4j.simpleLogger.showDateTime=true",
               "-Dorg.slf4j.simpleLogger.defaultLogLevel=info")
SMALL_MACHINE = {"num.network.threads": "2", "num.io.threads": "2", "background.threads": "2",
                 "num.replica.fetchers": "1", "log.cleaner.threads": "1", "num.recovery.threads.per.data.dir": "1"}

BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"


class KafkaUnavailable(BrokerError):
    """Java or Maven is missing, or the jars could not be fetched: the message says which."""


def kafka_version() -> str:
    """The Kafka version deploy/kafka/pom.xml names (one place to change it)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not found:
        raise KafkaUnavailable(f"{POM} names no <kafka.version>")
    return found.group(1).strip()


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def broker_settings(nodes: int) -> dict[str, str]:
    """The deployed broker settings for a cluster of `nodes` (a single node replicates nothing)."""
    settings = read_properties(DEPLOY_KAFKA / "cluster.properties")
    if nodes == 1:
        settings.update(read_properties(DEPLOY_KAFKA / "single-node.properties"))
    return settings


def missing_tools() -> str | None:
    """Why Kafka cannot run here (None: it can). Maven is needed only while the jars are not cached."""
    if not shutil.which("java"):
        return "no `java` on PATH (Apache Kafka runs on a JVM; Java 17 or later)"
    if not _complete(jars_dir()) and not shutil.which("mvn"):
        return f"no `mvn` on PATH to fetch the Kafka {kafka_version()} jars (they are not cached in {jars_dir()})"
    return None


def jars_dir(version: str | None = None) -> Path:
    return cache_dir() / "kafka" / (version or kafka_version())


def _complete(directory: Path) -> bool:
    return (directory / ".complete").exists()


def fetch_jars(version: str | None = None) -> Path:
    """The directory of the broker's jars, copied by Maven on first use. Two processes fetching at
    once both work in a temporary dir and rename it into place: neither sees a half-filled one."""
    version = version or kafka_version()
    target = jars_dir(version)
    if _complete(target):
        return target
    if not shutil.which("mvn"):
        raise KafkaUnavailable(f"Kafka {version} jars are not in {target} and there is no `mvn` to fetch them")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    log.info("fetching the Kafka %s jars with Maven into %s", version, target)
    result = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
                             "dependency:copy-dependencies", f"-DoutputDirectory={staging}"],
                            capture_output=True, text=True)
    if result.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaUnavailable(f"Maven could not fetch the Kafka {version} jars:\n{(result.stdout + result.stderr)[-2000:]}")
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def java_command(main: str, *args: str, jars: Path, options: tuple[str, ...] = ()) -> list[str]:
    archive = class_archive(jars)
    shared = (f"-XX:SharedArchiveFile={archive}",) if archive.exists() and not options else ()
    return ["java", *JVM_OPTIONS, *shared, *options, "-cp", f"{jars}/*", main, *args]


# Class-data sharing: the classes a broker loads on its way to ready, recorded once per jars dir by a
# throwaway node (-XX:ArchiveClassesAtExit, JDK 13+) and mapped by every later JVM. Measured on
# these 2 cores: a node's start -> ready 5.6 s -> 3.3-4.3 s; the cluster restarts of the failure tests
# and every `synthstream broker --engine kafka` start gain it. A JVM that cannot use the archive
# (another JDK build) says so in its log and starts without it.
CLASS_ARCHIVE = "classes.jsa"


def class_archive(jars: Path) -> Path:
    return jars / CLASS_ARCHIVE


def record_class_archive(jars: Path) -> None:
    """The class-data archive for `jars`, once: one node started on a temporary dir, made ready
    (which creates the group coordinator's topic too), stopped; the JVM writes the archive as it
    exits, into a staging file renamed into place. A failure is logged and not tried again."""
    archive, failed = class_archive(jars), jars / f"{CLASS_ARCHIVE}.failed"
    if archive.exists() or failed.exists():
        return
    log.info("recording the Kafka broker's classes once into %s (later starts are faster)", archive)
    with tempfile.TemporaryDirectory(prefix="kafka-classes-") as tmp:
        staging = jars / f".{CLASS_ARCHIVE}-{uuid.uuid4().hex}"
        node = KafkaNode(1, free_port(), free_port(), Path(tmp))
        cluster = KafkaCluster(Path(tmp), 1, [node], jars)
        try:
            cluster.prepare(record=False)
            node.start(jars, options=(f"-XX:ArchiveClassesAtExit={staging}",))
            try:
                cluster.wait_ready()
            finally:
                node.stop(timeout=60)
            if not staging.exists() or not staging.stat().st_size:
                raise BrokerError(f"the JVM wrote no archive:\n{node.log_tail()}")
            os.replace(staging, archive)
        except Exception as exc:  # noqa: BLE001 - the archive only saves time
            log.warning("could not record the Kafka class-data archive (%s); brokers start without it", exc)
            failed.touch()
        finally:
            staging.unlink(missing_ok=True)


@dataclass
class KafkaNode:
    """One combined broker+controller: its ports, its data dir, and its process once started."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_properties(self, settings: dict[str, str], voters: str) -> None:
        own = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in {**settings, **SMALL_MACHINE, **own}.items()]
        self.properties_path.write_text("\n".join(lines) + "\n")

    def formatted(self) -> bool:
        return (self.data_dir / "log" / "meta.properties").exists()

    def format_command(self, cluster_id: str, jars: Path) -> list[str]:
        return java_command(STORAGE_TOOL_MAIN, "format", "--ignore-formatted", "-t", cluster_id,
                            "-c", str(self.properties_path), jars=jars)

    def start(self, jars: Path, options: tuple[str, ...] = ()) -> None:
        if port_open(HOST, self.port):
            raise BrokerError(f"port {self.address} is already in use")
        with open(self.log_path, "ab") as out:
            # Own session: a Ctrl-C in a terminal is ours to pass on; the node is stopped by pid, and
            # it ends with us if we are killed (SIGKILL leaves no time to stop it).
            self.process = subprocess.Popen(java_command(BROKER_MAIN, str(self.properties_path), jars=jars,
                                                         options=options),
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent)

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown: leaders move away first), SIGKILL if it takes too long."""
        stop_child(self.process, grace=timeout)

    def kill(self) -> None:
        """SIGKILL: the node is gone at once, as in a crash."""
        proc = self.process
        if proc is not None:
            self.signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"


@dataclass
class KafkaCluster:
    """`size` combined KRaft nodes under `root` (node-1, node-2, …), all voters of one quorum."""

    root: Path
    size: int = 3
    nodes: list[KafkaNode] = field(default_factory=list)
    jars: Path | None = None

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [KafkaNode(i, free_port(), free_port(), self.root / f"node-{i}")
                          for i in range(1, self.size + 1)]

    @classmethod
    def single_node(cls, root: Path, port: int) -> KafkaCluster:
        """One durable node keeping its log under `root`: started again on the same dir, it has every
        topic, committed offset and record it had. (The controller's port may change between starts:
        the quorum's voters come from the properties written at each start.)"""
        return cls(root, 1, [KafkaNode(1, port or free_port(), free_port(), root)])

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def running(self) -> bool:
        return all(node.running() for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def prepare(self, record: bool = True) -> None:
        """Fetch the jars if needed, write every node's properties and format storage not yet formatted."""
        self.jars = self.jars or fetch_jars()
        if record:
            record_class_archive(self.jars)
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)
        settings = broker_settings(len(self.nodes))
        for node in self.nodes:
            node.write_properties(settings, voters)
        unformatted = [n for n in self.nodes if not n.formatted()]
        if unformatted:
            cluster_id = _cluster_id()
            # One JVM per node, side by side: each takes a couple of seconds of class loading.
            formats = [(n, subprocess.Popen(n.format_command(cluster_id, self.jars), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT)) for n in unformatted]
            for node, proc in formats:
                output = proc.communicate()[0].decode(errors="replace")
                if proc.returncode != 0:
                    raise BrokerError(f"formatting Kafka storage of node {node.node_id} failed:\n{output[-2000:]}")

    def start(self, timeout: float = 60.0) -> None:
        self.prepare()
        for node in self.nodes:
            node.start(self.jars)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0, nodes: list[KafkaNode] | None = None) -> None:
        """Until every running node answers and sees all of them as brokers (registered, unfenced), and
        the cluster names a group coordinator: on a new cluster the first group's lookup creates
        `__consumer_offsets` (50 partitions), which a pipeline's first start would otherwise wait for."""
        wanted = {n.node_id for n in (nodes or self.nodes)}
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise BrokerError(f"Kafka node {node.node_id} exited at start with code "
                                      f"{node.process.returncode}:\n{node.log_tail()}")
            if (all(wanted <= (_brokers_seen(n.address) or set()) for n in self.nodes if n.node_id in wanted)
                    and _coordinates_groups(next(n.address for n in self.nodes if n.running()))):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka nodes {sorted(wanted)} not ready within {timeout:.0f}s:\n"
                                  f"{self.nodes[0].log_tail()}")
            time.sleep(0.2)

    def restart(self, node: KafkaNode, timeout: float = 60.0) -> None:
        """Start a stopped or killed node again on its data dir, until every node sees it registered."""
        node.start(self.jars or fetch_jars())
        self.wait_ready(timeout)

    def active_controller(self) -> KafkaNode:
        """The KRaft quorum's leader. Not what clients are told: since KIP-919 DescribeCluster and
        Metadata name a random broker as "controller". Each voter records the leader it follows in
        its quorum-state file; the highest epoch among the running nodes is the current one."""
        states = []
        for node in self.nodes:
            if node.running():
                with contextlib.suppress(OSError, ValueError):
                    state = json.loads((node.data_dir / "log" / "__cluster_metadata-0" / "quorum-state").read_text())
                    states.append((state["leaderEpoch"], state["leaderId"]))
        live = {n.node_id for n in self.nodes if n.running()}
        leaders = [leader for _, leader in sorted(states, reverse=True)[:1] if leader in live]
        if not leaders:
            raise BrokerError(f"no running node leads the KRaft quorum (states: {states})")
        return self.node(leaders[0])

    async def partition_leader(self, topic: str, partition: int = 0) -> KafkaNode:
        """The node leading `topic`'s partition, as the cluster's metadata says."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
        finally:
            await admin.close()
        leader = next(p["leader"] for p in described["partitions"] if p["partition"] == partition)
        if leader < 0:
            raise BrokerError(f"{topic}-{partition} has no leader")
        return self.node(leader)

    async def wait_in_sync(self, timeout: float = 60.0) -> None:
        """Until no partition is under-replicated: every replica is back in its ISR. A rolling restart
        waits for this before the next node, or a second node down would leave partitions with one
        in-sync replica, under min.insync.replicas, and acks=all producers would stall."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                lagging = [(t["topic"], p["partition"]) for t in await admin.describe_topics(await admin.list_topics())
                           for p in t["partitions"] if set(p["isr"]) != set(p["replicas"])]
                if not lagging:
                    return
                if time.monotonic() > deadline:
                    raise BrokerError(f"partitions still under-replicated after {timeout:.0f}s: {lagging[:10]}")
                await asyncio.sleep(0.3)
        finally:
            await admin.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGTERM)  # all at once: each waits for the others otherwise
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node: for a cluster whose data is thrown away (a controlled shutdown of all
        three at once takes ~10 s, each waiting on the others to move leaders)."""
        for node in self.nodes:
            node.signal(signal.SIGKILL)
        for node in self.nodes:
            node.kill()


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (what `kafka-storage random-uuid`
    prints). Never one starting with '-': the storage tool would read it as an option (one in 64 did)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _ask_node(address: str, request: Any) -> Any:
    """One request to the node at `address` on a connection of its own; None when it does not answer
    (not listening yet, or not ready to answer: whatever the reason)."""
    from aiokafka.conn import create_conn

    host, _, port = address.rpartition(":")
    if not port_open(host, int(port)):
        return None

    async def ask() -> Any:
        conn = await asyncio.wait_for(create_conn(host, int(port), request_timeout_ms=2000), 3)
        try:
            return await asyncio.wait_for(conn.send(request), 3)
        finally:
            conn.close()

    try:
        return asyncio.run(ask())
    except Exception:  # noqa: BLE001 - not answering yet, whatever the reason
        return None


def _brokers_seen(address: str) -> set[int] | None:
    """The broker ids the node at `address` lists in its metadata (None: it does not answer)."""
    from aiokafka.protocol.metadata import MetadataRequest

    response = _ask_node(address, MetadataRequest([]))
    return None if response is None else {broker[0] for broker in response.brokers}


def _coordinates_groups(address: str) -> bool:
    """Whether the node at `address` names a coordinator for a consumer group (FindCoordinator)."""
    from aiokafka.protocol.coordination import FindCoordinatorRequest

    response = _ask_node(address, FindCoordinatorRequest("synthstream-ready", 0))
    return response is not None and response.error_code == 0


def main(argv: list[str]) -> int:
    """`python -m streamer.kafka.apache fetch`: the jars into the cache now (CI does it before the
    tests), or one line saying why the Apache Kafka tests will be skipped."""
    if argv != ["fetch"]:
        print("usage: python -m streamer.kafka.apache fetch", file=sys.stderr)
        return 2
    reason = missing_tools()
    if reason:
        print(f"Apache Kafka tests will be skipped: {reason}", file=sys.stderr)
        return 0
    jars = fetch_jars()
    record_class_archive(jars)
    print(jars)
    return 0


def kafka_cluster(root: Path, size: int = 3) -> contextlib.AbstractContextManager[KafkaCluster]:
    return running(KafkaCluster(root, size))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
