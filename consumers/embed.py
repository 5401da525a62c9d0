"""embed (instructions.scored → instructions.embedded): sentence embeddings, stateless.

Scales out: start as many workers as the partitions allow. Concurrent records are gathered into
encoder batches (the encoder is far faster per sentence in batches) and encoded off the event
loop, so the consumer keeps polling. Vectors travel as base64 float16.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from consumers.payloads import EmbeddedInstruction, ScoredInstruction
from streamer.runtime.batching import MicroBatcher
from streamer.runtime.embedding import DEFAULT_MODEL, pack_vector, shared_encoder
from streamer.runtime.stage import Emit, Stage, StageContext


class EmbedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model (bundled copy used when installed)")
    gather: int = Field(1024, ge=1, description="records gathered per encoder call")
    batch_size: int = Field(32, ge=1, description="encoder batch size within a gather")
    max_wait: float = Field(0.02, ge=0, description="seconds a partial gather waits for more records")


async def load_batcher(settings, options: EmbedOptions) -> MicroBatcher:
    encoder = shared_encoder(options.model)

    async def encode(texts: list[str]) -> list[str]:
        return [pack_vector(v) for v in await encoder.encode(texts, batch_size=options.batch_size)]

    # Gathering several encoder batches per call lets sentence-transformers sort them by length,
    # so little is spent on padding: that, not our overhead, decides throughput.
    return MicroBatcher(encode, max_size=options.gather, max_wait=options.max_wait)


async def embed(item: ScoredInstruction, ctx: StageContext) -> list[Emit]:
    packed = await ctx.resources.submit(item.instruction)
    return [Emit(EmbeddedInstruction(**item.model_dump(), embedding=packed, embedding_model=ctx.options.model))]


STAGE = Stage(
    name="embed",
    input_topic="instructions.scored",
    output_topics=("instructions.embedded",),
    input_model=ScoredInstruction,
    process=embed,
    concurrency=2048,  # two gathers in flight: the next fills while one is encoded
    options_model=EmbedOptions,
    setup=load_batcher,
    description="instruction -> normalised sentence embedding (batched)",
)
