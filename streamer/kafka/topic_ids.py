"""Topic ids from the broker: Metadata v10 (aiokafka's own metadata requests stop at v5).

Kafka 2.8 and later, and the embedded broker, give every topic a UUID at creation; a topic
created again gets a new one. `BrokerProbe` asks for them over a connection of its own, which
also makes it a cheap "is the broker there?" check (streamer.kafka.health).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from io import BytesIO

from aiokafka.conn import create_conn
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

from streamer.config import KafkaSettings
from streamer.kafka.clients import client_options

UNKNOWN_TOPIC = 3  # Kafka error code UNKNOWN_TOPIC_OR_PARTITION
NO_ID = "0" * 32
PROBE_TIMEOUT = 5.0


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
        self.cluster_id: str | None = None  # from the first answer that carries one

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
        self.cluster_id = getattr(response, "cluster_id", None) or self.cluster_id
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
