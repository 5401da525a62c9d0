"""The pipeline's stages, one per module. Each module holds its prompt, its output schema and
its function; none of them knows about Kafka."""

from __future__ import annotations

from consumers import answer, attribution, dedup, embed, instruction, judge, situation
from streamer.stage import Stage

# In pipeline order; `synthstream run` runs all of them.
PIPELINE: tuple[Stage, ...] = (
    attribution.STAGE,  # seeds -> seeds.attributed
    situation.STAGE,  # docs (+ seeds.attributed as a table) -> situations
    instruction.STAGE,  # situations -> instructions
    judge.STAGE,  # instructions -> instructions.scored | rejected
    embed.STAGE,  # instructions.scored -> instructions.embedded
    dedup.STAGE,  # instructions.embedded (1 partition) -> instructions.unique | rejected
    answer.STAGE,  # instructions.unique -> samples
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
