"""Records the SynthQuestions and GLAN stages pass between them (the topics' data contracts).

The runtime's own records (Document, Seed, Sample, DeadLetter) live in streamer.records.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from consumers.rubric import Judgement
from streamer.records import RecordData


class Compositions(BaseModel):
    """What an instruction is made of."""

    ability: str = Field(description="the ability it exercises")
    knowledge: str = Field(description="the knowledge it needs")
    extra_information: str = Field(description="information the user supplies with it")
    expected_output: str = Field(description="the form and content of a good answer")


class AttributedSeed(RecordData):
    kind: ClassVar[str] = "attributed_seed"
    instruction: str
    document: str | None = None
    keywords: list[str]
    user: str
    motivation: str
    scene: str
    compositions: Compositions
    score: int = Field(ge=0, le=7)
    source: str

    def example_text(self) -> str:
        """What the seed contributes to similarity search and to a prompt's worked example."""
        return f"{self.instruction}\n{self.scene}"


class Situation(RecordData):
    kind: ClassVar[str] = "situation"
    document: str = Field(description="the document text as given to the LLM (within the token budget)")
    user: str
    circumstances: str
    motivation: str
    situation: str


class Instruction(RecordData):
    kind: ClassVar[str] = "instruction"
    instruction: str
    compositions: Compositions | None = None
    context: dict[str, Any] = Field(default_factory=dict, description="method-specific inputs, e.g. the situation")


class ScoredInstruction(Instruction):
    kind: ClassVar[str] = "scored_instruction"
    judgement: Judgement


# What a stage carries forward in lineage.details for the sample's chain (streamer.storage.samples
# reads it back; the intermediate topics are not stored) ---------------------------------------
class DocumentRef(BaseModel):
    """details.document, from the situation stage."""

    title: str | None = None
    url: str | None = None
    source: str
    # A part of a long document (producers.parts): the whole document's (the page's) id, the part's
    # number (1-based) and the part count; None for a document sent whole.
    page_id: str | None = None
    part: int | None = None
    parts: int | None = None


class SeedRef(BaseModel):
    """An item of details.seeds: an example seed shown to the situation stage."""

    id: str = Field(description="root id of the seed instruction (as in lineage.seed_ids)")
    instruction: str = Field(description="its text, cut to a length the records carry")


class DedupOutcome(BaseModel):
    """details.dedup, from the dedup stage."""

    decision: Literal["kept", "exact_duplicate", "near_duplicate"]
    nearest_id: str | None = Field(None, description="the nearest kept instruction (an instructions.unique id)")
    similarity: float | None = Field(None, description="its cosine similarity")


class Rejection(RecordData):
    kind: ClassVar[str] = "rejection"
    stage: str
    reason: str
    score: float | None = None
    record: dict[str, Any]


class EmbeddedInstruction(ScoredInstruction):
    """A scored instruction with its sentence embedding, as dedup needs it and keeps it."""

    kind: ClassVar[str] = "embedded_instruction"
    embedding: str = Field(description="base64 of the float16 unit vector")
    embedding_model: str


# GLAN: taxonomy -> subjects -> syllabi -> questions ------------------------------------------
class Discipline(RecordData):
    """A leaf of the taxonomy, fed by `synthstream feed taxonomy`."""

    kind: ClassVar[str] = "discipline"
    name: str
    field: str
    sub_field: str
    description: str | None = None
    source: str = Field(description="taxonomy file and line")

    @property
    def taxonomy_path(self) -> list[str]:
        return [self.field, self.sub_field, self.name]


LEVELS = ("introductory", "intermediate", "advanced", "graduate", "professional")


class Subject(RecordData):
    kind: ClassVar[str] = "subject"
    taxonomy_path: list[str] = Field(description="field, sub-field, discipline")
    discipline_description: str | None = None
    name: str
    level: str
    subtopics: list[str]


class ClassSession(BaseModel):
    title: str = Field(min_length=2)
    description: str = Field(min_length=2)
    key_concepts: list[str] = Field(min_length=1, max_length=8)


class Syllabus(RecordData):
    kind: ClassVar[str] = "syllabus"
    taxonomy_path: list[str] = Field(description="field, sub-field, discipline")
    subject: str
    level: str
    sessions: list[ClassSession]
