"""syllabus (glan.subjects → glan.syllabi): one course plan per subject.

GLAN, step two: one call per subject designs 10–30 class sessions in teaching order, each with a
description and its key concepts. The key concepts are what the questions stage samples from, so
they are cleaned here (trimmed, duplicates within a session dropped).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from consumers.payloads import ClassSession, Subject, Syllabus
from streamer.runtime.stage import Emit, Prompt, Stage, StageContext
from streamer.text import name_key

MIN_SESSIONS, MAX_SESSIONS = 10, 30

PROMPT = Prompt(
    version="1",
    system="You are a teacher planning a course you will teach this term. Reply with JSON only.",
    user=(
        "Course: {subject}\nLevel: {level}\nDiscipline: {path}\nIt covers: {subtopics}\n\n"
        f"Plan the course as {MIN_SESSIONS} to {MAX_SESSIONS} class sessions in the order you will teach "
        "them, each building on the ones before. For every session give a title, a description of what "
        "is taught and practised in it (two or three sentences), and its key concepts (about five short "
        "terms a student must master)."
    ),
)


class SyllabusOutput(BaseModel):
    sessions: list[ClassSession] = Field(min_length=MIN_SESSIONS, max_length=MAX_SESSIONS)


def clean_session(session: ClassSession) -> ClassSession:
    concepts: dict[str, str] = {}
    for concept in session.key_concepts:
        concepts.setdefault(name_key(concept), concept.strip())
    concepts.pop("", None)
    return ClassSession(title=session.title.strip(), description=session.description.strip(),
                        key_concepts=list(concepts.values()))


async def design_syllabus(subject: Subject, ctx: StageContext) -> list[Emit]:
    messages = ctx.prompt.messages(subject=subject.name, level=subject.level,
                                   path=" > ".join(subject.taxonomy_path), subtopics="; ".join(subject.subtopics))
    out: SyllabusOutput = await ctx.llm.structured(messages, SyllabusOutput, max_tokens=ctx.llm.list_budget())
    syllabus = Syllabus(taxonomy_path=subject.taxonomy_path, subject=subject.name, level=subject.level,
                        sessions=[clean_session(s) for s in out.sessions])
    return [Emit(syllabus, details={"syllabus_sessions": len(syllabus.sessions)})]


STAGE = Stage(
    name="syllabus",
    input_topic="glan.subjects",
    output_topics=("glan.syllabi",),
    input_model=Subject,
    process=design_syllabus,
    prompt=PROMPT,
    description="subject -> syllabus of 10-30 class sessions with descriptions and key concepts",
)
