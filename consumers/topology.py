"""The pipeline as a graph, derived from the stage declarations (`PIPELINE`) and the feeders
(`FEEDERS`): every topic, the sink's topics, the console's graph. Nothing here lists a stage or a
topic of its own but the few every pipeline has (`rejected`, `dlq`, the redrive markers, the
incarnation token), so declaring a stage in `consumers/__init__.py` is all it takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamer.runtime.stage import Stage

REJECTED, DLQ = "rejected", "dlq"
# Topics of the machinery rather than of a stage: audit (rejections, dead letters), the markers of
# redriven dead letters (each redriven once), the token telling this set of topics from an earlier one,
# the batch lane's records (compacted: every worker finds the batches of every other, streamer.state.batch_log).
AUDIT_TOPICS = (REJECTED, DLQ)
MACHINERY_TOPICS = ("dlq.redriven", "incarnation", "batches")
SINK = "sink"  # the stage-like writer of the store (streamer.storage.sink)


@dataclass(frozen=True)
class Feeder:
    """What puts root records on an input topic (producers/): a command and the topics it writes."""

    command: str
    topics: tuple[str, ...]


def topics(pipeline: Sequence[Stage], feeders: Sequence[Feeder]) -> tuple[str, ...]:
    """Every topic, unprefixed, in pipeline order (feeders' first), each once."""
    names = [t for f in feeders for t in f.topics]
    for stage in pipeline:
        names += [stage.input_topic, *stage.tables, *stage.output_topics]
    return tuple(dict.fromkeys([*names, *AUDIT_TOPICS, *MACHINERY_TOPICS]))


def final_topics(pipeline: Sequence[Stage]) -> tuple[str, ...]:
    """Stage outputs no stage reads: what the pipeline makes (samples)."""
    read = {s.input_topic for s in pipeline} | {t for s in pipeline for t in s.tables}
    outputs = dict.fromkeys(t for s in pipeline for t in s.output_topics)
    return tuple(t for t in outputs if t not in read and t not in AUDIT_TOPICS)


def sink_topics(pipeline: Sequence[Stage]) -> tuple[str, ...]:
    """What the sink stores: the final topics, the tables (a sample's chain shows its seeds), the
    audit topics, and the redrive markers (so a letter is redriven once even after its topics were lost)."""
    tables = [t for s in pipeline for t in s.tables]
    return tuple(dict.fromkeys([*final_topics(pipeline), *AUDIT_TOPICS, *tables, "dlq.redriven"]))


def generated_topics(pipeline: Sequence[Stage]) -> tuple[str, ...]:
    """Topics of records an LLM made, the pipeline's end first (where a simulated run shows first)."""
    outputs = [t for s in reversed(pipeline) if s.prompt is not None for t in s.output_topics]
    return tuple(t for t in dict.fromkeys(outputs) if t not in AUDIT_TOPICS)


def graph(pipeline: Sequence[Stage], feeders: Sequence[Feeder]) -> dict[str, Any]:
    """Nodes (feed, topics, stages, sink) and edges (kind: flow, table, reject) for the console."""
    nodes: dict[str, dict[str, Any]] = {"feed": {"id": "feed", "kind": "feed",
                                                 "commands": [f.command for f in feeders]}}
    edges: list[dict[str, str]] = []

    def edge(source: str, target: str, kind: str = "flow") -> None:
        for name in (source, target):
            nodes.setdefault(name, {"id": name, "kind": "topic"})
        edges.append({"from": source, "to": target, "kind": kind})

    for feeder in feeders:
        for topic in feeder.topics:
            edge("feed", topic, "reject" if topic == REJECTED else "flow")
    for stage in pipeline:
        nodes[stage.name] = {"id": stage.name, "kind": "stage", "description": stage.description}
        edge(stage.input_topic, stage.name)
        for table in stage.tables:
            edge(table, stage.name, "table")
        for topic in stage.output_topics:
            edge(stage.name, topic, "reject" if topic == REJECTED else "flow")
    nodes[SINK] = {"id": SINK, "kind": "sink"}
    for topic in sink_topics(pipeline):
        if topic in nodes or topic == DLQ:  # dead letters: every stage may write them (counted on its card)
            edge(topic, SINK)
    return {"nodes": list(nodes.values()), "edges": edges, "stages": [s.name for s in pipeline],
            "topics": list(topics(pipeline, feeders))}
