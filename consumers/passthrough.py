"""passthrough (instructions.scored → instructions.unique): holds the dedup slot open.

Judge and answer talk through the topic names the design gives to dedup's input and output,
so embedding + FAISS dedup can be inserted between them without touching either stage.
Until then this forwards every scored instruction unchanged.
"""

from __future__ import annotations

from consumers.records import ScoredInstruction
from streamer.stage import Emit, Stage, StageContext


async def forward(item: ScoredInstruction, ctx: StageContext) -> list[Emit]:
    return [Emit(item)]


STAGE = Stage(
    name="passthrough",
    input_topic="instructions.scored",
    output_topics=("instructions.unique",),
    input_model=ScoredInstruction,
    process=forward,
    description="forwards scored instructions to answer (dedup takes this place)",
)
