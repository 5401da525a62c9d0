"""Typed records that travel on the topics.

Every Kafka value is one `Envelope` serialised as plain JSON (so ordinary Kafka tools can read
it); the key is the envelope's `root_id` as a UTF-8 string, which keeps a document's whole
lineage on one partition per topic. The envelope carries identity, lineage and the simulated
flag; `data` holds the stage-specific payload, a pydantic model chosen by `kind`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamer.text import fold_text

SCHEMA_VERSION = 1


def stable_hash(*parts: str, length: int = 16) -> str:
    """A short hex digest of the parts; the separator keeps ("ab","c") apart from ("a","bc")."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def content_id(text: str) -> str:
    """Id of a fed text: hash of its folded form (streamer.text.fold_text), so exact duplicates
    collapse, whatever spacing, line endings or compatibility characters they differ in."""
    return stable_hash(fold_text(text))


def derived_id(parent_id: str, stage: str, stage_version: str, variant: str | int = 0) -> str:
    """Deterministic id of a stage output: redelivery of the same input yields the same id."""
    return stable_hash(parent_id, stage, stage_version, str(variant))


class StageStamp(BaseModel):
    """Which version of which stage, with which model, touched a record."""

    stage: str
    version: str
    model: str | None = None


class Lineage(BaseModel):
    document_id: str | None = None
    seed_ids: list[str] = Field(default_factory=list)
    stages: list[StageStamp] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict, description="method-specific lineage")


class Envelope(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str
    kind: str
    root_id: str
    parent_id: str | None = None
    method: str | None = None
    simulated: bool = False
    created_at: float = Field(default_factory=time.time)
    lineage: Lineage = Field(default_factory=Lineage)
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate(orjson.loads(raw))

    def payload(self, model: type[RecordData]) -> Any:
        return model.model_validate(self.data)


class RecordData(BaseModel):
    """Base of every payload model; `kind` names it inside the envelope."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]


class Document(RecordData):
    kind: ClassVar[str] = "document"
    text: str
    source: str = Field(description="where it was read: path:line, URL, ...")
    meta: dict[str, Any] = Field(default_factory=dict)


class Seed(RecordData):
    """A real user instruction, optionally with a document it relates to."""

    kind: ClassVar[str] = "seed"
    instruction: str
    document: str | None = None
    source: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Sample(RecordData):
    """A finished instruction/response pair, the unit of the exported dataset."""

    kind: ClassVar[str] = "sample"
    instruction: str
    response: str
    meta: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(RecordData):
    kind: ClassVar[str] = "dead_letter"
    stage: str
    input_topic: str
    partition: int
    offset: int
    error: str
    error_type: str
    attempts: int
    input: Any = Field(description="the input envelope, or its raw text if it did not parse")
    failed_at: float = Field(default_factory=time.time)


def new_root(data: RecordData, *, method: str | None = None, identity: str | None = None) -> Envelope:
    """Envelope for a record entering the pipeline from a feeder. Its id hashes `identity`, by
    default the normalised text, so the same input fed twice is the same record."""
    text = identity or getattr(data, "text", None) or getattr(data, "instruction", None) or data.model_dump_json()
    rid = content_id(text)
    lineage = Lineage(document_id=rid if isinstance(data, Document) else None)
    return Envelope(id=rid, kind=data.kind, root_id=rid, method=method, lineage=lineage, data=data.model_dump())
