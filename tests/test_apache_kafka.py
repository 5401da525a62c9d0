"""The pipeline on Apache Kafka: a 3-node KRaft cluster (plain JVM processes, streamer.kafka.apache),
the real CLI in its own processes and the simulator over HTTP. Skipped, with the reason, where
there is no Java (or no Maven to fetch the jars)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from helpers import expected_ids, make_texts, stored_rows
from streamer.kafka.apache import KafkaCluster, broker_settings
from streamer.kafka.incarnation import incarnations, short
from streamer.kafka.topic_ids import BrokerProbe

pytestmark = pytest.mark.slow


async def describe(cluster: KafkaCluster, topics: list[str]) -> dict[str, list[dict]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    await admin.start()
    try:
        return {t["topic"]: t["partitions"] for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


def test_the_cluster_runs_the_deployed_settings_on_three_nodes(kafka_cluster):
    settings = broker_settings(3)
    assert settings["default.replication.factor"] == "3" and settings["min.insync.replicas"] == "2"
    for node in kafka_cluster.nodes:
        assert node.running()
        written = node.properties_path.read_text().splitlines()
        assert {f"{k}={v}" for k, v in settings.items()} <= set(written), node.node_id
    probe = BrokerProbe_for(kafka_cluster)
    assert not probe.cluster_id.startswith("tansu")


def BrokerProbe_for(cluster: KafkaCluster) -> BrokerProbe:  # noqa: N802
    from streamer.config import KafkaSettings

    probe = BrokerProbe(KafkaSettings(bootstrap_servers=cluster.bootstrap_servers))

    async def ask() -> None:
        try:
            await probe.ask([])
        finally:
            probe.close()

    asyncio.run(ask())
    return probe


def test_demo_sized_chain_ends_every_document_once_on_three_replicated_brokers(
        kafka_pipeline, kafka_cluster, start_simulator, tmp_path):
    sim = start_simulator()
    kafka_pipeline.env["SYNTHSTREAM_LLM__BASE_URL"] = sim.url
    texts = make_texts(30)
    started = time.monotonic()
    kafka_pipeline.feed(tmp_path, texts, seeds=4)
    kafka_pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
    took = time.monotonic() - started

    topics = [kafka_pipeline.prefix + n for n in ("docs", "instructions.embedded", "incarnation", "samples")]
    described = asyncio.run(describe(kafka_cluster, topics))
    assert {t: len(p) for t, p in described.items()} == dict(zip(topics, (4, 1, 1, 4))), described
    assert all(len(p["replicas"]) == 3 for parts in described.values() for p in parts), described

    samples = [orjson.loads(r["envelope"]) for r in stored_rows(kafka_pipeline.data_dir, kafka_pipeline.prefix + "samples")]
    assert {s["root_id"] for s in samples} == expected_ids(texts), f"{len(samples)} samples in {took:.0f}s"
    # Files are named by Kafka's topic ids.
    ids = asyncio.run(incarnations(kafka_pipeline.settings(), ["samples"]))
    stored = list((kafka_pipeline.data_dir / "store").rglob("*.parquet"))
    assert any(f"-i{short(ids['samples'])}-" in p.name for p in stored), [p.name for p in stored]

    exported = tmp_path / "dataset.jsonl"
    kafka_pipeline.cli("export", "--out", str(exported))
    rows = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert len(rows) == len(texts) and {r["root_id"] for r in rows} == expected_ids(texts)
    print(f"30 documents through the chain on 3 Kafka brokers in {took:.1f}s")
