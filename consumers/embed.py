"""embed (instructions.scored → instructions.embedded): sentence embeddings, stateless.

Scales out: start as many workers as the partitions allow. Each record asks the process's shared
encoder (streamer.runtime.embedding) for its vector; concurrent requests gather into one encoder
call while the encoder is busy (it is far faster per sentence in batches), off the event loop, so
the consumer keeps polling. Vectors travel as base64 float16.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from consumers.payloads import EmbeddedInstruction, ScoredInstruction
from streamer.runtime.embedding import DEFAULT_MODEL, Encoder, pack_vector, shared_encoder
from streamer.runtime.stage import Emit, Stage, StageContext


class EmbedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model (bundled copy used when installed)")
    gather: int = Field(1024, ge=1, description="most texts per encoder call (of every caller in the process): "
                        "a backlog is encoded in large calls, sorted by length so little goes to padding")
    batch_size: int = Field(16, ge=1, description="encoder batch size within a call (memory for activations grows with it)")


async def load_encoder(settings, options: EmbedOptions) -> Encoder:
    encoder = shared_encoder(options.model)
    # While the encoder is busy, records gather; the next call takes up to `gather` of them, so
    # sentence-transformers can sort them by length and little is spent on padding.
    encoder.gather_limit, encoder.batch_size = options.gather, options.batch_size
    encoder.warm()  # loads in the background while the consumer joins its group
    return encoder


async def embed(item: ScoredInstruction, ctx: StageContext) -> list[Emit]:
    [vector] = await ctx.resources.encode([item.instruction])
    return [Emit(EmbeddedInstruction(**item.model_dump(), embedding=pack_vector(vector),
                                     embedding_model=ctx.options.model))]


STAGE = Stage(
    name="embed",
    input_topic="instructions.scored",
    output_topics=("instructions.embedded",),
    input_model=ScoredInstruction,
    process=embed,
    concurrency=2048,  # two gathers in flight: the next fills while one is encoded
    options_model=EmbedOptions,
    setup=load_encoder,
    description="instruction -> normalised sentence embedding (batched)",
)
