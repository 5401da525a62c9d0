"""The 7-criterion quality rubric, shared by seed attribution and the instruction judge."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from streamer.text import at_least_words

CRITERIA: dict[str, str] = {
    "specificity": "asks for something precise, not a vague or generic request",
    "domain_knowledge": "needs real knowledge of a field to answer well",
    "complexity": "involves several steps, constraints or parts",
    "problem_solving": "requires reasoning or working something out, not only recall",
    "creativity": "invites an original or tailored answer rather than a stock one",
    "technical_accuracy": "has a clearly right or wrong answer that can be checked",
    "real_world_application": "comes from a practical need a real person has",
}

RUBRIC_TEXT = "\n".join(f"- {name}: 1 if it {meaning}, else 0" for name, meaning in CRITERIA.items())

Point = Literal[0, 1]


class RubricScores(BaseModel):
    """What the LLM fills in: a short analysis and 0/1 per criterion (we add them up)."""

    # Text, not a number: small models answer "100," here.
    analysis: Annotated[str, AfterValidator(at_least_words(3))] = Field(
        max_length=2000, description="two or three sentences weighing the criteria")
    specificity: Point
    domain_knowledge: Point
    complexity: Point
    problem_solving: Point
    creativity: Point
    technical_accuracy: Point
    real_world_application: Point

    def judgement(self) -> Judgement:
        scores = {name: getattr(self, name) for name in CRITERIA}
        return Judgement(analysis=self.analysis, scores=scores, total=sum(scores.values()))


class Judgement(BaseModel):
    analysis: str
    scores: dict[str, int]
    total: int = Field(ge=0, le=len(CRITERIA))
