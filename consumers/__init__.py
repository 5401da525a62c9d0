"""The pipeline's stages, one per module. Each module holds its prompt, its output schema and
its function; none of them knows about Kafka."""

from __future__ import annotations

from consumers import (
    answer,
    attribution,
    dedup,
    embed,
    instruction,
    judge,
    questions,
    situation,
    subjects,
    syllabus,
)
from consumers.topology import Feeder, sink_topics, topics
from streamer.runtime.stage import Stage

# In pipeline order; `synthstream run` runs all of them. Both methods meet at `instructions`.
PIPELINE: tuple[Stage, ...] = (
    attribution.STAGE,  # seeds -> seeds.attributed
    situation.STAGE,  # docs (+ seeds.attributed as a table) -> situations
    instruction.STAGE,  # situations -> instructions
    subjects.STAGE,  # glan.disciplines -> glan.subjects (GLAN)
    syllabus.STAGE,  # glan.subjects -> glan.syllabi
    questions.STAGE,  # glan.syllabi -> instructions
    judge.STAGE,  # instructions -> instructions.scored | rejected
    embed.STAGE,  # instructions.scored -> instructions.embedded
    dedup.STAGE,  # instructions.embedded (1 partition) -> instructions.unique | rejected
    answer.STAGE,  # instructions.unique -> samples
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
# What puts root records on the pipeline (producers/): the topics each feeding command writes.
FEEDERS: tuple[Feeder, ...] = (
    Feeder("feed seeds", ("seeds",)),
    Feeder("feed docs", ("docs", "rejected")),  # documents the feed's filters turn away, with why
    Feeder("glan", ("glan.disciplines",)),  # `feed taxonomy` too
)
TOPICS: tuple[str, ...] = topics(PIPELINE, FEEDERS)  # every topic (unprefixed)
SINK_TOPICS: tuple[str, ...] = sink_topics(PIPELINE)  # what the sink stores


def downstream_of(*topics: str) -> list[Stage]:
    """The stages a record entering at `topics` passes through, in pipeline order."""
    reached, chosen = set(topics), []
    for stage in PIPELINE:  # in order, so one pass follows every chain
        if stage.input_topic in reached:
            chosen.append(stage)
            reached.update(stage.output_topics)
    return chosen
