"""The pipeline's stages, one per module. Each module holds its prompt, its output schema and
its function; none of them knows about Kafka."""

from __future__ import annotations

from consumers import answer, attribution, instruction, judge, passthrough, situation
from streamer.stage import Stage

# In pipeline order; `synthstream run` runs all of them.
PIPELINE: tuple[Stage, ...] = (
    attribution.STAGE,  # seeds -> seeds.attributed
    situation.STAGE,  # docs (+ seeds.attributed as a table) -> situations
    instruction.STAGE,  # situations -> instructions
    judge.STAGE,  # instructions -> instructions.scored | rejected
    passthrough.STAGE,  # instructions.scored -> instructions.unique
    answer.STAGE,  # instructions.unique -> samples
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
