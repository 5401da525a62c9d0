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

import logging
import time
import uuid
from pathlib import Path
from typing import Literal

import orjson
from aiokafka.errors import KafkaError

from streamer.config import Settings
from streamer.kafka.clients import TopicNames, make_producer
from streamer.kafka.reader import first_value
from streamer.kafka.topic_ids import BrokerProbe
from streamer.locks import write_atomically
from streamer.records import stable_hash

log = logging.getLogger(__name__)

MARKER_TOPIC = "incarnation"  # unprefixed; one partition

IdentityMode = Literal["auto", "topic-ids", "marker"]


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
            token = await _first_token(self.settings, topic)
            if token is None:
                producer = make_producer(self.settings.kafka)
                await producer.start()
                try:
                    await producer.send_and_wait(topic, uuid.uuid4().hex.encode(), partition=0)
                finally:
                    await producer.stop()
                # Whoever wrote first wins: every process reads offset 0, not its own token.
                token = await _first_token(self.settings, topic)
            if token is None:
                raise KafkaError(f"cannot read the incarnation marker on {topic}")
            self._marker = token
        return self._marker

    def close(self) -> None:
        self.probe.close()


async def _first_token(settings: Settings, topic: str) -> str | None:
    value = await first_value(settings, topic)
    return value.decode() if value is not None else None


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
            write_atomically(self.path, orjson.dumps(seen, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def replaced_line(servers: str | None, replaced: list[str], prefix: str) -> str:
    """The one line every command prints when the broker's topics are newer than the store's."""
    shown = ", ".join(TopicNames(prefix).unprefixed(t) for t in replaced[:4]) + (", ..." if len(replaced) > 4 else "")
    return (f"kafka: {len(replaced)} topics on {servers} are not the ones this data dir last worked with ({shown}): "
            f"the broker restarted empty (the embedded broker keeps nothing) or they were recreated. Stored results "
            f"are kept; feeding the same inputs again sends only unfinished work")
