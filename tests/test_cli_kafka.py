"""CLI commands that talk to Kafka: the embedded broker, topic creation, follow-mode feeding."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from helpers import CLI, expected_ids, make_texts, probe_broker, read_topic, stop_process, wait_for, write_jsonl
from streamer.kafka.broker import BrokerError, EmbeddedBroker
from streamer.processes import free_port, port_open


def test_broker_command_serves_kafka_and_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = subprocess.Popen([*CLI, "broker", "--port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 20, what="broker port")

        async def topics() -> list[str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
            await admin.start()
            try:
                return await admin.list_topics()
            finally:
                await admin.close()

        assert isinstance(asyncio.run(topics()), list)
    finally:
        code = stop_process(proc)
    assert code == 0
    assert not port_open("127.0.0.1", port), "the tansu child must stop with the command"
    assert f"listening on 127.0.0.1:{port}" in proc.stderr.read().decode()


def test_a_killed_broker_command_takes_tansu_with_it(tmp_path):
    """`kill -9` leaves the command no time to stop its child: tansu ends by itself (parent-death
    signal) and the port closes, instead of a broker nobody owns holding it."""
    port = free_port()
    proc = subprocess.Popen([*CLI, "broker", "--port", str(port)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 20, what="broker port")
        children = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        assert children, "the broker command should run tansu as its child"
    finally:
        code = stop_process(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    wait_for(lambda: not port_open("127.0.0.1", port), 10, what="tansu to end with its parent")
    assert not port_open("127.0.0.1", port)

    def tansu_alive() -> list[int]:
        alive = []
        for pid in children:
            with contextlib.suppress(OSError):  # gone between the two reads
                if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
                    alive.append(pid)
        return alive
    # The port closes as tansu exits; the process itself may take a moment more to end.
    wait_for(lambda: not tansu_alive(), 10, what=lambda: f"tansu to end with its parent (alive: {tansu_alive()})")


def test_a_port_taken_by_a_socket_not_yet_listening_is_reported_as_in_use():
    """Connecting finds nobody there, so the port looks free; tansu then fails to listen and exits
    with code 0. The message says what tansu said, not just the exit code."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"exited at start with code \d+: 127\.0\.0\.1:{port} is already in use"):
            EmbeddedBroker(port=port).start()


def test_topics_are_created_with_configured_partition_counts(pipeline, broker, tmp_path):
    pipeline.env["SYNTHSTREAM_KAFKA__TOPIC_PARTITIONS__DOCS"] = "3"
    pipeline.cli("feed", "docs", str(write_jsonl(tmp_path / "d.jsonl", make_texts(2))))

    async def partitions() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            names = [pipeline.prefix + n for n in ("docs", "samples", "instructions.embedded")]
            described = await admin.describe_topics(names)
            return {t["topic"].removeprefix(pipeline.prefix): len(t["partitions"]) for t in described}
        finally:
            await admin.close()

    assert asyncio.run(partitions()) == {"docs": 3, "samples": 4, "instructions.embedded": 1}


def test_feed_follow_picks_up_new_files_until_stopped(pipeline, broker, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first, later = make_texts(6)[:3], make_texts(6)[3:]
    write_jsonl(inbox / "a.jsonl", first)
    feeder = pipeline.start("feed", "docs", str(inbox), "--follow", name="feeder")
    topic = pipeline.prefix + "docs"
    wait_for(lambda: len(read_topic(broker.bootstrap_servers, topic, timeout=2)) == 3, 60, what="first file fed")
    write_jsonl(inbox / "b.jsonl", later)
    wait_for(lambda: len(read_topic(broker.bootstrap_servers, topic, timeout=2)) == 6, 60, what="new file fed")
    assert stop_process(feeder, signal.SIGTERM) == 0
    assert "fed 6 records" in pipeline.log_of(feeder)
    assert {d["id"] for d in read_topic(broker.bootstrap_servers, topic)} == expected_ids(first + later)


def test_feed_seeds_from_stdin_collapses_exact_duplicates(pipeline, broker):
    lines = [{"instruction": "How do I  descale a kettle?"}, {"instruction": "How do I descale a kettle?"},
             {"instruction": "Explain eigenvalues", "document": "Linear algebra notes"}]
    result = pipeline.cli("feed", "seeds", "-", stdin=b"".join(orjson.dumps(x) + b"\n" for x in lines))
    assert "fed 2 records" in result.stderr.decode() and "1 exact duplicates" in result.stderr.decode()
    seeds = read_topic(broker.bootstrap_servers, pipeline.prefix + "seeds")
    by_text = {s["data"]["instruction"]: s for s in seeds}
    assert set(by_text) == {"How do I descale a kettle?", "Explain eigenvalues"}
    assert by_text["Explain eigenvalues"]["data"]["document"] == "Linear algebra notes"
    assert by_text["Explain eigenvalues"]["data"]["source"] == "<stdin>:3"


def test_the_embedded_broker_is_recognised_as_tansu_and_gets_short_group_timing(broker):
    """tansu holds a group join for half the session timeout: workers against it use 2 s sessions
    unless the settings name their own, so joins take about a second, not five."""
    from streamer.config import KafkaSettings
    from streamer.kafka.clients import is_tansu, use_fast_group_timing

    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    probe = probe_broker(broker.bootstrap_servers)
    assert is_tansu(probe.cluster_id), probe.cluster_id
    use_fast_group_timing(kafka)
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (2000, 500)
    chosen = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, session_timeout_ms=8000)
    use_fast_group_timing(chosen)
    assert chosen.session_timeout_ms == 8000  # a setting of the user's own is kept
    assert not is_tansu(None) and not is_tansu("kafka-cluster-1")
