"""answer (instructions.unique → samples): the response, with its own model and sampling.

Only records dedup kept reach it, so no tokens are spent answering a duplicate.

The instruction is the user's turn, sent as it is: it was written to be sent to an assistant.
Set a stronger model or other sampling under [stages.answer.llm].
"""

from __future__ import annotations

from consumers.payloads import ScoredInstruction
from streamer.records import Sample
from streamer.runtime.stage import Emit, Prompt, Stage, StageContext

PROMPT = Prompt(
    version="1",
    system=(
        "You are a knowledgeable, careful assistant. Answer the user's request completely and "
        "accurately, using what they give you; state assumptions where information is missing."
    ),
    user="{instruction}",
)
MIN_WORDS = 3  # fewer real words is no answer (an empty reply, "42", a stray token): asked again, then dlq


async def answer(item: ScoredInstruction, ctx: StageContext) -> list[Emit]:
    result = await ctx.llm.complete(ctx.prompt.messages(instruction=item.instruction), min_words=MIN_WORDS)
    meta = {"judge_score": item.judgement.total,
            "compositions": item.compositions.model_dump() if item.compositions else None}
    return [Emit(Sample(instruction=item.instruction, response=result.content.strip(), meta=meta))]


STAGE = Stage(
    name="answer",
    input_topic="instructions.unique",
    output_topics=("samples",),
    input_model=ScoredInstruction,
    process=answer,
    prompt=PROMPT,
    description="instruction -> response",
)
