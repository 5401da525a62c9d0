"""The pipeline's stages, one per module. Each module holds its prompt, its output schema and
its function; none of them knows about Kafka."""

from __future__ import annotations

from streamer.stage import Stage

from consumers import standin

# In pipeline order; `synthstream run` runs all of them.
PIPELINE: tuple[Stage, ...] = (standin.STAGE,)
STAGES: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
