"""subjects (glan.disciplines → glan.subjects): the courses a discipline is taught through.

GLAN, step one below the taxonomy. The LLM is asked `subject_queries` times per discipline at a
high temperature, each time with a different focus, because one answer lists only the most
obvious courses; the answers are merged by normalised subject name (subtopics united, the first
level kept) and every subject becomes one record, its id derived from its name.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from consumers.payloads import LEVELS, Discipline, Subject
from streamer.runtime.stage import Emit, Expected, Prompt, Stage, StageContext
from streamer.text import name_key

PROMPT = Prompt(
    version="1",
    system=(
        "You are an experienced curriculum designer who knows how every discipline is taught, from "
        "school and vocational training to university and professional education. Reply with JSON only."
    ),
    user=(
        "Discipline: {discipline}\nPlace in the map of knowledge: {path}\n{description}\n"
        "List subjects (courses) through which this discipline is taught. This is request {batch} of "
        "{batches}; concentrate on {focus}. Give each subject a specific course name, the level it is "
        "taught at (one of: {levels}) and three to eight subtopics it covers."
    ),
)

FOCUSES = (
    "the foundations every learner of the discipline needs first",
    "the core courses of a full degree or training programme",
    "advanced and specialist courses",
    "applied, hands-on and professional practice",
    "methods, tools and techniques of the discipline",
    "its connections with neighbouring disciplines",
    "recent developments and emerging topics",
    "history, theory and key debates",
    "courses for adults learning it for work or everyday life",
    "skills assessed in examinations and certifications",
)


class SubjectProposal(BaseModel):
    name: str = Field(min_length=2, max_length=150)
    level: Literal[LEVELS]  # type: ignore[valid-type]
    subtopics: list[str] = Field(min_length=1, max_length=8)


class SubjectList(BaseModel):
    subjects: list[SubjectProposal] = Field(min_length=1, max_length=20)


class SubjectsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_queries: int = Field(10, ge=1, le=100, description="LLM calls per discipline")
    temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature of those calls")
    max_subjects: int = Field(0, ge=0, description="keep at most this many subjects per discipline; 0 = all")


def merge_subjects(batches: list[list[SubjectProposal]]) -> list[SubjectProposal]:
    """One subject per normalised name, in order of first mention; subtopics united."""
    merged: dict[str, SubjectProposal] = {}
    for batch in batches:
        for proposal in batch:
            key = name_key(proposal.name)
            if not key:
                continue
            if key not in merged:
                merged[key] = proposal.model_copy(update={"name": proposal.name.strip(), "subtopics": []})
            kept = merged[key]
            known = {name_key(t) for t in kept.subtopics}
            for topic in proposal.subtopics:
                if name_key(topic) and name_key(topic) not in known:
                    known.add(name_key(topic))
                    kept.subtopics.append(topic.strip())
    return list(merged.values())


async def propose_subjects(discipline: Discipline, ctx: StageContext) -> list[Emit]:
    opts: SubjectsOptions = ctx.options

    async def ask(batch: int) -> list[SubjectProposal]:
        messages = ctx.prompt.messages(
            discipline=discipline.name, path=" > ".join(discipline.taxonomy_path),
            description=f"About it: {discipline.description}\n" if discipline.description else "",
            batch=batch + 1, batches=opts.subject_queries, focus=FOCUSES[batch % len(FOCUSES)],
            levels=", ".join(LEVELS))
        out: SubjectList = await ctx.llm.structured(messages, SubjectList, temperature=opts.temperature,
                                                    max_tokens=ctx.llm.list_budget())
        return out.subjects

    subjects = merge_subjects(await asyncio.gather(*(ask(b) for b in range(opts.subject_queries))))
    if opts.max_subjects:
        subjects = subjects[: opts.max_subjects]
    return [
        Emit(Subject(taxonomy_path=discipline.taxonomy_path, discipline_description=discipline.description,
                     name=s.name, level=s.level, subtopics=s.subtopics),
             variant=name_key(s.name), method="glan",
             details={"taxonomy_path": [*discipline.taxonomy_path, s.name], "level": s.level})
        for s in subjects
    ]


def expected_subjects(opts: SubjectsOptions, handled: int) -> Expected:
    calls = handled * opts.subject_queries
    cap = f" (at most max_subjects {opts.max_subjects} each)" if opts.max_subjects else ""
    return Expected(handled, handled * opts.max_subjects if opts.max_subjects else None, calls,
                    f"{handled} disciplines x subject_queries {opts.subject_queries} = {calls} LLM calls, "
                    f"at least one subject each{cap}")


STAGE = Stage(
    name="subjects",
    input_topic="glan.disciplines",
    output_topics=("glan.subjects",),
    input_model=Discipline,
    process=propose_subjects,
    prompt=PROMPT,
    concurrency=4,
    options_model=SubjectsOptions,
    expect=expected_subjects,
    description="discipline -> subjects (merged over subject_queries calls), each with level and subtopics",
)
