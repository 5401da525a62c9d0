"""Which incarnation of a topic this is: the broker's topic id, or a marker where it has none.

A topic that is deleted and created again — and every topic of a restarted embedded broker,
which keeps nothing — starts again at offset 0. Offsets alone cannot tell the two apart, so
whatever outlives the broker (stored files, state snapshots, committed positions) is tied to an
incarnation instead:

- `topic-ids`: Kafka's topic id (Metadata v10+, Kafka 2.8 and later, the embedded broker), a
  UUID the broker assigns at creation; a recreated topic gets a new one.
- `marker`: for brokers without topic ids, the first record of the prefix's `incarnation` topic,
  a random token written by whichever process creates the topics first. A broker that lost its
  topics loses the marker too, so the token changes with every restart. (It cannot notice one
  topic deleted and recreated by hand on such a broker; topic ids can.)

`auto` asks for topic ids and falls back to the marker when the broker gives none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Literal

import orjson
from aiokafka import TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

from streamer.config import KafkaSettings, Settings
from streamer.kafka.clients import TopicNames, client_options, make_consumer, make_producer, start_consumer
from streamer.records import stable_hash

log = logging.getLogger(__name__)

MARKER_TOPIC = "incarnation"  # unprefixed; one partition
UNKNOWN_TOPIC = 3  # Kafka error code UNKNOWN_TOPIC_OR_PARTITION
NO_ID = "0" * 32
PROBE_TIMEOUT = 5.0

IdentityMode = Literal["auto", "topic-ids", "marker"]


class Uuid(AbstractType[bytes]):
    """Kafka's UUID: 16 raw bytes."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding UUID")
        return value


class MetadataResponse_v10(Response):
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", CompactArray(("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32),
                                 ("rack", CompactString("utf-8")), ("tags", TaggedFields))),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", CompactArray(
            ("error_code", Int16), ("name", CompactString("utf-8")), ("topic_id", Uuid), ("is_internal", Boolean),
            ("partitions", CompactArray(
                ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32), ("leader_epoch", Int32),
                ("replica_nodes", CompactArray(Int32)), ("isr_nodes", CompactArray(Int32)),
                ("offline_replicas", CompactArray(Int32)), ("tags", TaggedFields))),
            ("topic_authorized_operations", Int32), ("tags", TaggedFields))),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdRequest(Request[MetadataRequest_v10]):
    """Metadata of named topics with their ids (aiokafka's own metadata requests stop at v5)."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        return request_struct_class([(bytes(16), name, {}) for name in self._topics], False, False, False, {})


@dataclass
class Probe:
    """One answer from the broker: the ids of the asked topics that exist (None: no id given)."""

    ids: dict[str, str | None]
    supports_ids: bool


class BrokerProbe:
    """A connection of its own to one bootstrap server: cheap to ask every second, and separate
    from the consumers and producers whose retries it must not wait behind."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._conn = None
        self._next_host = 0

    @property
    def servers(self) -> str:
        return self.kafka.bootstrap_servers or "(none)"

    async def _connect(self):
        hosts = [h.strip() for h in (self.kafka.bootstrap_servers or "").split(",") if h.strip()]
        host, _, port = hosts[self._next_host % len(hosts)].rpartition(":")
        self._next_host += 1  # the next try after a failure goes to the next server
        opts = client_options(self.kafka)
        return await create_conn(
            host.strip("[]"), int(port), client_id=opts["client_id"], request_timeout_ms=int(PROBE_TIMEOUT * 1000),
            ssl_context=opts.get("ssl_context"), security_protocol=opts["security_protocol"],
            sasl_mechanism=opts.get("sasl_mechanism", "PLAIN"), sasl_plain_username=opts.get("sasl_plain_username"),
            sasl_plain_password=opts.get("sasl_plain_password"),
        )

    async def ask(self, topics: list[str]) -> Probe:
        """Raises OSError, KafkaError or TimeoutError when the broker does not answer."""
        try:
            return await self._ask(topics)
        except (OSError, KafkaError, asyncio.TimeoutError):
            if self._conn is None:
                raise
        # The kept connection may be one to a broker that has since died and come back: once
        # more on a new one before saying the broker is away.
        self.close()
        return await self._ask(topics)

    async def _ask(self, topics: list[str]) -> Probe:
        try:
            if self._conn is None or not self._conn.connected():
                self.close()
                self._conn = await asyncio.wait_for(self._connect(), PROBE_TIMEOUT)
            try:
                response = await asyncio.wait_for(self._conn.send(TopicIdRequest(topics)), PROBE_TIMEOUT)
            except (IncompatibleBrokerVersion, NotImplementedError):
                return Probe({t: None for t in await self._existing(topics)}, supports_ids=False)
        except BaseException:
            self.close()
            raise
        ids: dict[str, str | None] = {}
        for error_code, name, topic_id, *_ in response.topics:
            if error_code == UNKNOWN_TOPIC or name is None:
                continue
            hexed = topic_id.hex()
            ids[name] = None if hexed == NO_ID else hexed
        return Probe(ids, supports_ids=any(v is not None for v in ids.values()))

    async def _existing(self, topics: list[str]) -> list[str]:
        from aiokafka.protocol.metadata import MetadataRequest

        response = await asyncio.wait_for(self._conn.send(MetadataRequest(topics, False)), PROBE_TIMEOUT)
        return [t[1] for t in response.topics if t[0] != UNKNOWN_TOPIC]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class TopicIdentity:
    """Incarnation ids of topics, by the configured mode (see the module text)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode: IdentityMode = settings.kafka.topic_identity
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.probe = BrokerProbe(settings.kafka)
        self._marker: str | None = None

    async def of(self, topics: list[str], *, fresh: bool = False) -> dict[str, str]:
        """Full topic name -> incarnation id, for the topics that exist. `fresh`: read the marker
        again (a watcher must see a marker topic recreated between two of its checks)."""
        if fresh:
            self._marker = None
        if self.mode == "marker":
            existing = await self.probe.ask(topics)
            marker = await self.marker()
            return {t: marker for t in existing.ids}
        probe = await self.probe.ask(topics)
        if probe.supports_ids or not probe.ids:
            return {t: i for t, i in probe.ids.items() if i is not None}
        if self.mode == "topic-ids":
            raise KafkaError("the broker gives no topic ids (Kafka 2.8 or later does); set "
                             "kafka.topic_identity = \"marker\"")
        marker = await self.marker()
        return {t: marker for t in probe.ids}

    async def marker(self) -> str:
        """The prefix's incarnation token: the first record of its marker topic, written if there is none."""
        if self._marker is None:
            topic = self.names(MARKER_TOPIC)
            token = await read_first(self.settings, topic)
            if token is None:
                producer = make_producer(self.settings.kafka)
                await producer.start()
                try:
                    await producer.send_and_wait(topic, uuid.uuid4().hex.encode(), partition=0)
                finally:
                    await producer.stop()
                # Whoever wrote first wins: every process reads offset 0, not its own token.
                token = await read_first(self.settings, topic)
            if token is None:
                raise KafkaError(f"cannot read the incarnation marker on {topic}")
            self._marker = token
        return self._marker

    def close(self) -> None:
        self.probe.close()


async def read_first(settings: Settings, topic: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The value of the record at offset 0 of partition 0, or None if there is none."""
    consumer = await start_consumer(make_consumer(settings.kafka, group_id=None))
    try:
        tp = TopicPartition(topic, 0)
        if not consumer.partitions_for_topic(topic):
            return None
        if (await consumer.end_offsets([tp]))[tp] == 0:
            return None
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
            for record in batch.get(tp, []):
                return record.value.decode()
        return None
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


async def incarnations(settings: Settings, names: list[str]) -> dict[str, str]:
    """One-shot: unprefixed topic name -> incarnation id, for those of `names` that exist."""
    identity = TopicIdentity(settings)
    topic = identity.names
    try:
        found = await identity.of([topic(n) for n in names])
    finally:
        identity.close()
    return {topic.unprefixed(t): i for t, i in found.items()}


def short(incarnation: str) -> str:
    """12 hex digits naming an incarnation in file names and messages (a hash: some brokers' ids
    begin with a timestamp, so their first digits say little)."""
    return stable_hash(incarnation, length=12)


class SeenIncarnations:
    """The incarnations this data dir last worked with (`<data_dir>/incarnations.json`), so any
    command can tell a user that the broker's topics are not the ones the store came from."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "incarnations.json"

    def load(self) -> dict[str, dict[str, object]]:
        try:
            return orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def replaced(self, current: dict[str, str]) -> list[str]:
        """Topics (full names) whose incarnation differs from the one last seen here."""
        seen = self.load()
        return sorted(t for t, i in current.items() if t in seen and seen[t].get("id") != i)

    def note(self, current: dict[str, str]) -> None:
        """Remember these incarnations (atomically: several processes note at once)."""
        seen = self.load()
        now = time.time()
        changed = False
        for topic, incarnation in current.items():
            if seen.get(topic, {}).get("id") != incarnation:
                seen[topic] = {"id": incarnation, "since": now}
                changed = True
        if changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            tmp.write_bytes(orjson.dumps(seen, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            os.replace(tmp, self.path)


def replaced_line(servers: str | None, replaced: list[str], prefix: str) -> str:
    """The one line every command prints when the broker's topics are newer than the store's."""
    shown = ", ".join(TopicNames(prefix).unprefixed(t) for t in replaced[:4]) + (", ..." if len(replaced) > 4 else "")
    return (f"kafka: {len(replaced)} topics on {servers} are not the ones this data dir last worked with ({shown}): "
            f"the broker restarted empty (the embedded broker keeps nothing) or they were recreated. Stored results "
            f"are kept; feeding the same inputs again sends only unfinished work")
