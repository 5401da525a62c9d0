"""The pipeline on Apache Kafka: a 3-node KRaft cluster (plain JVM processes, streamer.kafka.apache),
the real CLI in its own processes and the simulator over HTTP. Skipped, with the reason, where
there is no Java (or no Maven to fetch the jars)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import endings, expected_ids, make_texts, probe_broker, stop_process, wait_for
from streamer.kafka.apache import broker_settings
from streamer.processes import free_port, port_open
from streamer.kafka.incarnation import incarnations

pytestmark = pytest.mark.slow

BOOTSTRAP = "SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"


def test_the_cluster_runs_the_deployed_settings_on_three_nodes(kafka_cluster):
    settings = broker_settings(3)
    assert settings["default.replication.factor"] == "3" and settings["min.insync.replicas"] == "2"
    for node in kafka_cluster.nodes:
        assert node.running()
        written = node.properties_path.read_text().splitlines()
        assert {f"{k}={v}" for k, v in settings.items()} <= set(written), node.node_id
    probe = probe_broker(kafka_cluster.bootstrap_servers)
    assert not probe.cluster_id.startswith("tansu")


def test_without_java_the_kafka_tests_are_skipped_saying_why(tmp_path):
    """A machine without Java runs the suite anyway: the Kafka tests are skipped, in one summary line."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # the venv's programs only: no java, no mvn
    here = Path(__file__)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                             "-o", "addopts=-ra", f"{here.name}::test_the_cluster_runs_the_deployed_settings_on_three_nodes",
                             f"{here.name}::test_durable_broker_keeps_topics_offsets_and_records_across_a_restart_mid_run"],
                            cwd=here.parent, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    lines = result.stdout.splitlines()
    said = [line for line in lines if line.startswith("Apache Kafka tests skipped: no `java` on PATH")]
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    assert len(said) == 1 and "2 skipped" in lines[-1], result.stdout[-2000:]
    assert skipped and all(said[0] in line for line in skipped), skipped
    fetched = subprocess.run([sys.executable, "-m", "streamer.kafka.apache", "fetch"], cwd=here.parent.parent, env=env,
                             capture_output=True, text=True, timeout=60)
    assert fetched.returncode == 0 and fetched.stderr.startswith("Apache Kafka tests will be skipped: no `java`")


def test_durable_broker_keeps_topics_offsets_and_records_across_a_restart_mid_run(
        kafka_pipeline, start_simulator, tmp_path):
    """`synthstream broker --engine kafka`: stopped and started again on its data dir while a worker
    runs, it has every topic (same ids), record and committed offset; the worker rides through
    and finishes every document without a refeed. Then the broker command is SIGKILLed: its node
    goes with it, and the idle worker backs off instead of reconnecting hundreds of times a second
    (issue 20: 10.4% of a core measured before), waiting for the broker (kafka.unavailable_timeout)
    rather than exiting."""
    port = free_port()
    broker_dir = tmp_path / "broker"
    command = ("broker", "--engine", "kafka", "--port", str(port), "--data-dir", str(broker_dir))
    kafka_pipeline.env[BOOTSTRAP] = f"127.0.0.1:{port}"  # one node: topics with its default, one replica
    broker = kafka_pipeline.start(*command, name="broker")
    sim = start_simulator("--latency", "1")  # four LLM stages: every document takes seconds
    kafka_pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    wait_for(lambda: "broker listening" in kafka_pipeline.log_of(broker), 90, what="kafka broker")
    texts = make_texts(16)
    kafka_pipeline.feed(tmp_path, texts, seeds=3)
    ids_before = asyncio.run(incarnations(kafka_pipeline.settings(), ["docs", "samples"]))
    worker = kafka_pipeline.start("run", "--no-progress")
    wait_for(lambda: "situation: assigned partitions" in kafka_pipeline.log_of(worker), 60, what="the run to start")
    time.sleep(1)

    assert stop_process(broker) == 0, kafka_pipeline.log_of(broker)
    assert len(endings(kafka_pipeline)) < len(texts), "the run ended before the broker restart"
    assert not port_open("127.0.0.1", port)
    broker = kafka_pipeline.start(*command, name="broker")
    wait_for(lambda: "broker listening" in kafka_pipeline.log_of(broker), 90, what="kafka broker again")

    wait_for(lambda: set(endings(kafka_pipeline)) == expected_ids(texts), 180, what="every document")
    assert worker.poll() is None, kafka_pipeline.log_of(worker)[-3000:]
    assert asyncio.run(incarnations(kafka_pipeline.settings(), ["docs", "samples"])) == ids_before
    assert set(endings(kafka_pipeline).values()) == {1}
    status = kafka_pipeline.cli("status", "--until-idle", "--interval", "0.5", timeout=60).stdout.decode()
    assert "not the ones this data dir last worked with" not in kafka_pipeline.log_of(worker) + status

    idle_share = core_share(worker.pid, 3)
    said_before = kafka_pipeline.log_of(worker).count("unreachable")  # the restart above was said too
    nodes = [int(pid) for task in Path(f"/proc/{broker.pid}/task").iterdir()
             for pid in (task / "children").read_text().split()]
    assert nodes, "the broker command should run the Kafka node as its child"
    assert stop_process(broker, signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not [pid for pid in nodes if Path(f"/proc/{pid}").exists()
                          and "zombie" not in Path(f"/proc/{pid}/status").read_text()], 20,
             what="the Kafka node to end with the command")
    wait_for(lambda: not port_open("127.0.0.1", port), 10, what="the port to close")
    wait_for(lambda: kafka_pipeline.log_of(worker).count("unreachable") > said_before, 30,
             what="the worker to find the broker gone")
    away_share = core_share(worker.pid, 8)
    print(f"worker CPU: {idle_share:.1%} of a core idle with the broker up, {away_share:.1%} with it gone")
    assert worker.poll() is None, kafka_pipeline.log_of(worker)[-3000:]
    assert away_share <= 0.05, kafka_pipeline.log_of(worker)[-3000:]
    assert stop_process(worker) == 0, kafka_pipeline.log_of(worker)[-3000:]  # a stop needs no broker


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_share(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def test_the_batch_records_topic_is_created_compacted_with_one_partition(kafka_pipeline):
    """The batch lane's records are a table: Kafka keeps the last change per key, never ages them out."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from consumers import TOPICS
    from streamer.kafka.clients import client_options, ensure_topics

    settings = kafka_pipeline.settings()
    topic = kafka_pipeline.prefix + "batches"

    async def created() -> tuple[int, str]:
        await ensure_topics(settings, TOPICS)
        admin = AIOKafkaAdminClient(**client_options(settings.kafka))
        await admin.start()
        try:
            # A node that did not create it learns of the new topic's partitions a moment later.
            for _ in range(50):
                [description] = await admin.describe_topics([topic])
                if description["partitions"]:
                    break
                await asyncio.sleep(0.2)
            [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                      {"cleanup.policy": None})])
            policy = [entry[1] for resource in response.resources for entry in resource[4]
                      if entry[0] == "cleanup.policy"]
            return len(description["partitions"]), policy[0]
        finally:
            await admin.close()

    assert asyncio.run(created()) == (1, "compact")
