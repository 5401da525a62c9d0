"""Kafka client factories, topic names and topic creation. Only the runtime imports this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from typing import Any, Iterable, Iterator

import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from streamer.config import KafkaSettings, Settings
from streamer.kafka.broker import EmbeddedBroker

log = logging.getLogger(__name__)

# The topics themselves are derived from the stage declarations (consumers.TOPICS). Partition
# counts come from the configuration; the ones here override the default because a design rule needs them.
# dedup is a single writer; the incarnation token is the first record of its one partition; the batch
# records are read in the order they were written.
FIXED_PARTITIONS = {"instructions.embedded": 1, "incarnation": 1, "batches": 1}
# Topics kept as tables, the last record per key: the batch lane's records (streamer.state.batch_log).
COMPACTED = {"batches"}

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
PRODUCER_BATCH_BYTES = 1024 * 1024  # below every broker's default message.max.bytes (1 MiB + 12)


class TopicPartitionsError(RuntimeError):
    """A topic exists with a partition count a design rule forbids."""


class _MetadataWithoutCreation(MetadataRequest):
    """aiokafka asks for metadata with auto-creation on, so a broker that allows it creates any
    topic a client merely looks up — with the broker's default partition count. A client left
    over from before a broker restart would so recreate `instructions.embedded` with several
    partitions before `ensure_topics` could make it with one. Topics are made by ensure_topics only."""

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False) -> None:
        super().__init__(topics, allow_auto_topic_creation)


aiokafka.client.MetadataRequest = _MetadataWithoutCreation  # the one name its client builds requests from


# Kafka's own clients' reconnect.backoff.ms / reconnect.backoff.max.ms defaults. aiokafka has no
# reconnect backoff: every loop that wants a connection to a node that is gone tries it again
# right away (and logs an error and forces a metadata refresh each time), so an idle worker made
# ~450 connection attempts a second during a broker outage and burnt 10% of a core.
RECONNECT_BACKOFF = 0.05
RECONNECT_BACKOFF_MAX = 1.0
_connect_unbacked = aiokafka.client.AIOKafkaClient._get_conn


async def _connect_with_backoff(self: aiokafka.client.AIOKafkaClient, node_id: Any, **kwargs: Any) -> Any:
    """`_get_conn`, refusing (None: "not ready", which every caller handles) a node whose last
    connection failed less than its backoff ago; the backoff doubles per failure up to the max
    and is forgotten on success, so a broker that comes back is reached within a second."""
    failures: dict[Any, tuple[float, float]] = self.__dict__.setdefault("_synthstream_failures", {})
    loop_time = asyncio.get_running_loop().time()
    failed_at, backoff = failures.get(node_id, (0.0, 0.0))
    if loop_time < failed_at + backoff:
        return None
    conn = await _connect_unbacked(self, node_id, **kwargs)
    if conn is None:
        failures[node_id] = (loop_time, min(RECONNECT_BACKOFF_MAX, max(RECONNECT_BACKOFF, 2 * backoff)))
    else:
        failures.pop(node_id, None)
    return conn


aiokafka.client.AIOKafkaClient._get_conn = _connect_with_backoff  # noqa: SLF001 - every client connects through it


class TopicNames:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def unprefixed(self, topic: str) -> str:
        return topic.removeprefix(self.prefix)


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = ssl.create_default_context()
    if kafka.sasl_mechanism:
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            opts["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return opts


# tansu (the embedded broker, `synthstream broker`) holds a new group's JoinGroup for half the
# session timeout (measured: 10 s -> 5 s, 2 s -> 1 s), so the defaults for Kafka would cost every
# start seconds. One machine, one broker: a short session is safe there and groups form in ~1 s.
FAST_GROUP_TIMING = (("session_timeout_ms", 2000), ("heartbeat_interval_ms", 500))


def is_tansu(cluster_id: str | None) -> bool:
    return bool(cluster_id) and cluster_id.startswith("tansu")


def use_fast_group_timing(kafka: KafkaSettings) -> None:
    """Short group timing for a single-machine broker, unless the settings name their own."""
    for key, value in FAST_GROUP_TIMING:
        if key not in kafka.model_fields_set:
            setattr(kafka, key, value)


def make_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    # acks=all: an output counts as written only once the broker has it durably.
    # Batches of up to 1 MiB: with aiokafka's default 16 KB a batch of our few-KB records fills after
    # two or three, and every sender waiting on it wakes and tries again (~9 waits per send; measured
    # 0.30 ms CPU per send against 0.04 ms with room for the records lingering together).
    return AIOKafkaProducer(**client_options(kafka), acks="all", linger_ms=5, max_request_size=MAX_MESSAGE_BYTES,
                            max_batch_size=PRODUCER_BATCH_BYTES)


def make_consumer(kafka: KafkaSettings, *topics: str, group_id: str | None, **extra: Any) -> AIOKafkaConsumer:
    opts = dict(enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_bytes=MAX_MESSAGE_BYTES,
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES, session_timeout_ms=kafka.session_timeout_ms,
                heartbeat_interval_ms=kafka.heartbeat_interval_ms, fetch_max_wait_ms=kafka.fetch_max_wait_ms)
    opts.update(extra)
    return AIOKafkaConsumer(*topics, **client_options(kafka), group_id=group_id, **opts)


async def start_consumer(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """Start a consumer, with every topic's metadata, and let its background task run once:
    aiokafka cannot stop a consumer whose task was cancelled before it ever ran (a reader that
    returns at once would crash)."""
    try:
        await consumer.start()
        # Its first metadata asked for no topics (Kafka then names none), so `partitions_for_topic`
        # would say "no such topic" for every topic until a refresh: refresh now, for all of them.
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way to ask for it
    except BaseException:
        with contextlib.suppress(Exception):
            await consumer.stop()  # a consumer that never started still counts as open until stopped
        raise
    await asyncio.sleep(0)
    return consumer


RECANCEL_EVERY = 0.02  # seconds between cancels of a fetcher that swallowed one (stop_consumer)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """consumer.stop(), which ends. aiokafka cancels its fetcher task once; a cancel that lands while
    the fetcher is still awaiting its own fetches after an unassign (what exact_end_offsets leaves) is
    swallowed there (contextlib.suppress(CancelledError)), and the fetcher then waits for an assignment
    forever. Seen on Kafka, whose replies take longer; cancelled again until it ends, soon: every
    reader stopped on a shutdown path (a stateful stage's last snapshot reads the changelogs' ends)
    would otherwise add the whole wait to the exit (measured: +0.5 s in a third of `run --until-idle`
    runs on 3 Kafka brokers, with 0.5 s between cancels)."""
    stopping = asyncio.ensure_future(consumer.stop())
    while not (await asyncio.wait([stopping], timeout=RECANCEL_EVERY))[0]:
        fetch_task = getattr(getattr(consumer, "_fetcher", None), "_fetch_task", None)
        if fetch_task is not None and not fetch_task.done():
            fetch_task.cancel()
    stopping.result()


def partitions_for(settings: Settings, name: str) -> int:
    if name in FIXED_PARTITIONS:
        return FIXED_PARTITIONS[name]
    return settings.kafka.topic_partitions.get(name, settings.kafka.partitions)


async def replication_factor(admin: AIOKafkaAdminClient, kafka: KafkaSettings) -> int:
    """`kafka.replication_factor`, or unset, the cluster's own `default.replication.factor`. A fixed
    default of 1 left every topic on a 3-broker cluster with one copy, silently: Kafka 4.1 takes
    acks=all writes to a one-copy topic despite `min.insync.replicas=2` (tried), and they are lost
    with that one broker. CreateTopics as aiokafka speaks it (v3) cannot ask for "the broker's
    default" (-1 came with v4), so the value is read from a broker's configuration."""
    if kafka.replication_factor is not None:
        return kafka.replication_factor
    brokers = sorted(b.nodeId for b in admin._client.cluster.brokers())  # noqa: SLF001 - the metadata it has
    if len(brokers) <= 1:
        return 1
    name = "default.replication.factor"
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, str(brokers[0]),
                                                                  {name: None})])
        entries = [entry for resource in response.resources for entry in resource[4] if entry[0] == name]
        return max(1, int(entries[0][1]))
    except Exception as exc:  # noqa: BLE001 - a broker without DescribeConfigs: as many as it has, up to 3
        copies = min(3, len(brokers))
        log.warning("could not read the cluster's %s (%r): creating topics with %d replicas", name, exc, copies)
        return copies


async def ensure_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create missing topics with their configured partition counts (existing ones are kept)."""
    topic = TopicNames(settings.kafka.topic_prefix)
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in names if topic(n) not in existing]
        if wanted:
            copies = await replication_factor(admin, settings.kafka)
            missing = [NewTopic(topic(n), partitions_for(settings, n), copies,
                                topic_configs={"cleanup.policy": "compact"} if n in COMPACTED else {})
                       for n in wanted]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(missing)
            log.info("created topics (%d replica%s): %s", copies, "" if copies == 1 else "s",
                     ", ".join(t.name for t in missing))
        fixed = [topic(n) for n in names if n in FIXED_PARTITIONS]
        for description in await admin.describe_topics(fixed) if fixed else []:
            name, count = description["topic"], len(description["partitions"])
            wanted = FIXED_PARTITIONS[topic.unprefixed(name)]
            if count and count != wanted:
                raise TopicPartitionsError(
                    f"topic {name} has {count} partitions but must have {wanted} (dedup is a single writer): it "
                    f"was created by something other than synthstream, e.g. a broker that auto-creates topics. "
                    f"Delete it (it is rebuilt by synthstream) or restart the embedded broker")
    finally:
        await admin.close()


@contextlib.contextmanager
def kafka_available(settings: Settings, purpose: str) -> Iterator[Settings]:
    """Yield settings with a reachable bootstrap server, starting an embedded broker if none is set."""
    if settings.kafka.bootstrap_servers:
        yield settings
        return
    broker = EmbeddedBroker()
    broker.start()
    print(
        f"synthstream: no kafka.bootstrap_servers configured; started an embedded broker for {purpose} at "
        f"{broker.bootstrap_servers} (pid {broker.process.pid}, in-memory, stopped on exit)",
        file=sys.stderr, flush=True,
    )
    settings.kafka.bootstrap_servers = broker.bootstrap_servers
    use_fast_group_timing(settings.kafka)
    try:
        yield settings
    finally:
        broker.stop()
        settings.kafka.bootstrap_servers = None
        print(f"synthstream: embedded broker {broker.bootstrap_servers} stopped", file=sys.stderr, flush=True)
