"""questions (glan.syllabi → instructions): homework questions sampled from a syllabus.

GLAN, step three. For each of `questions_per_syllabus` questions a draw picks one class session
(a basic question) or two (an integrative one, each session contributing at least one concept),
with `integrative_share` setting the mix, and 1–`max_concepts` of their key concepts. The draw is
seeded by the syllabus record's id and the question's index, so a replay draws exactly the same
sessions and concepts whatever prompt or model writes the question. The prompt shows the whole
syllabus, the drawn sessions and concepts, and says the student has studied up to the later one.
Questions join the SynthQuestions path at `instructions` (judge, dedup, answer) with method `glan`.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from consumers.payloads import ClassSession, Instruction, Syllabus
from streamer.records import stable_hash
from streamer.runtime.stage import Emit, Expected, Prompt, Stage, StageContext

PROMPT = Prompt(
    version="1",
    system=(
        "You are a teacher writing homework for your own course. Write the question only, never its "
        "answer. Reply with JSON only."
    ),
    user=(
        "Course: {subject} ({level}), in {path}.\n\nThe course syllabus:\n{syllabus}\n\n"
        "The student has studied everything up to and including session {last_number} ({last_title}).\n"
        "Write one homework question {scope} that exercises these key concepts: {concepts}.\n"
        "The question must stand on its own (state any data, code or scenario it needs), call for "
        "reasoning or problem solving rather than recalling a definition, and be answerable with what "
        "the course has taught so far."
    ),
)

Mode = Literal["basic", "integrative"]


class QuestionOutput(BaseModel):
    question: str = Field(min_length=20)


class QuestionsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions_per_syllabus: int = Field(10, ge=1, le=500)
    integrative_share: float = Field(0.5, ge=0, le=1, description="share of questions drawn from two sessions")
    max_concepts: int = Field(5, ge=1, le=5, description="concepts per question at most (integrative: at least 2)")


@dataclass(frozen=True)
class QuestionDraw:
    """What one question is about: sessions are 0-based indexes in teaching order."""

    index: int
    mode: Mode
    sessions: tuple[int, ...]
    concepts: tuple[tuple[int, str], ...]  # (session, concept)

    def lineage(self, syllabus: Syllabus) -> dict:
        return {
            "index": self.index, "mode": self.mode,
            "sessions": [{"number": s + 1, "title": syllabus.sessions[s].title} for s in self.sessions],
            "concepts": [{"session": s + 1, "concept": c} for s, c in self.concepts],
        }


def draw_question(record_id: str, index: int, sessions: list[ClassSession], opts: QuestionsOptions) -> QuestionDraw:
    """The seeded draw for question `index` of a syllabus record."""
    rng = random.Random(stable_hash(record_id, "question", str(index)))
    usable = [i for i, s in enumerate(sessions) if s.key_concepts]
    if not usable:
        raise ValueError("the syllabus has no key concepts to draw from")
    if len(usable) >= 2 and rng.random() < opts.integrative_share:
        first, second = sorted(rng.sample(usable, 2))
        # One concept from each session first, so both really contribute.
        picks = [(first, rng.choice(sessions[first].key_concepts)), (second, rng.choice(sessions[second].key_concepts))]
        rest = [(s, c) for s in (first, second) for c in sessions[s].key_concepts if (s, c) not in picks]
        extra = rng.randint(0, max(0, min(opts.max_concepts, len(rest) + 2) - 2))
        picks += rng.sample(rest, extra)
        return QuestionDraw(index, "integrative", (first, second), _in_syllabus_order(picks, sessions))
    session = rng.choice(usable)
    concepts = sessions[session].key_concepts
    chosen = rng.sample(concepts, rng.randint(1, min(opts.max_concepts, len(concepts))))
    return QuestionDraw(index, "basic", (session,), _in_syllabus_order([(session, c) for c in chosen], sessions))


def _in_syllabus_order(picks: list[tuple[int, str]], sessions: list[ClassSession]) -> tuple[tuple[int, str], ...]:
    return tuple(sorted(picks, key=lambda p: (p[0], sessions[p[0]].key_concepts.index(p[1]))))


def render_syllabus(syllabus: Syllabus) -> str:
    return "\n".join(f"Session {n}. {s.title}: {s.description} Key concepts: {', '.join(s.key_concepts)}."
                     for n, s in enumerate(syllabus.sessions, start=1))


def scope_text(draw: QuestionDraw, syllabus: Syllabus) -> str:
    named = [f"session {s + 1} ({syllabus.sessions[s].title})" for s in draw.sessions]
    if draw.mode == "basic":
        return f"on {named[0]}"
    return f"that connects {named[0]} with {named[1]}"


async def write_questions(syllabus: Syllabus, ctx: StageContext) -> list[Emit]:
    opts: QuestionsOptions = ctx.options
    rendered = render_syllabus(syllabus)

    async def write(draw: QuestionDraw) -> Emit:
        last = max(draw.sessions)
        messages = ctx.prompt.messages(
            subject=syllabus.subject, level=syllabus.level, path=" > ".join(syllabus.taxonomy_path),
            syllabus=rendered, last_number=last + 1, last_title=syllabus.sessions[last].title,
            scope=scope_text(draw, syllabus), concepts="; ".join(c for _, c in draw.concepts))
        out: QuestionOutput = await ctx.llm.structured(messages, QuestionOutput)
        sampling = draw.lineage(syllabus)
        context = {"subject": syllabus.subject, "level": syllabus.level, "mode": draw.mode,
                   "sessions": [s["title"] for s in sampling["sessions"]],
                   "concepts": [c["concept"] for c in sampling["concepts"]]}
        return Emit(Instruction(instruction=out.question.strip(), context=context), variant=draw.index,
                    method="glan", details={"sampling": sampling})

    draws = [draw_question(ctx.record.id, i, syllabus.sessions, opts) for i in range(opts.questions_per_syllabus)]
    return list(await asyncio.gather(*(write(d) for d in draws)))


def expected_questions(opts: QuestionsOptions, handled: int) -> Expected:
    made = handled * opts.questions_per_syllabus
    return Expected(made, made, rule=f"{handled} syllabi x questions_per_syllabus {opts.questions_per_syllabus}")


STAGE = Stage(
    name="questions",
    input_topic="glan.syllabi",
    output_topics=("instructions",),
    input_model=Syllabus,
    process=write_questions,
    prompt=PROMPT,
    concurrency=8,
    options_model=QuestionsOptions,
    expect=expected_questions,
    description="syllabus -> homework questions on seeded draws of one or two sessions and 1-5 key concepts",
)
