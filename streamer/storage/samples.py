"""One stored sample as the export (and the console's sample viewer) shows it: its whole chain.

The stages carry what a sample needs in its lineage details (document title/URL/source, the
example seeds, the situation, the judge's scores, the dedup decision; GLAN's taxonomy path and
sampling), so a sample alone has its chain although the intermediate topics are not stored.
Samples stored before a part was carried get null for that part.

EXPORT_SCHEMA_VERSION counts changes of the exported row's shape:
1: lineage, meta and stage_versions as JSON strings; document_id and seed_ids flat.
2: every nested part an object; document, seeds, situation, glan, compositions, judge, dedup,
   models and instruction_id added; model is the model that answered.
3: document.page_id, document.part and document.parts (the parts of one long page told apart and
   regrouped).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

EXPORT_SCHEMA_VERSION = 3

_STR = pa.string()
_STAMP = pa.struct([("stage", _STR), ("version", _STR), ("model", _STR)])

# The row's declared part. Open objects (models, stage_versions, judge.scores, compositions,
# lineage.details, meta) take their fields from the data (streamer.storage.nested).
DECLARED_SCHEMA = pa.schema([
    ("export_schema_version", pa.int32()),
    ("id", _STR),
    ("instruction_id", _STR),
    ("root_id", _STR),
    ("method", _STR),
    ("simulated", pa.bool_()),
    ("created_at", pa.float64()),
    ("messages", pa.list_(pa.struct([("role", _STR), ("content", _STR)]))),
    ("instruction", _STR),
    ("model", _STR),
    ("models", pa.struct([])),
    ("stage_versions", pa.struct([])),
    ("document", pa.struct([("id", _STR), ("title", _STR), ("url", _STR), ("source", _STR), ("page_id", _STR),
                            ("part", pa.int32()), ("parts", pa.int32())])),
    ("seeds", pa.list_(pa.struct([("id", _STR), ("instruction", _STR)]))),
    ("situation", pa.struct([("user", _STR), ("circumstances", _STR), ("motivation", _STR), ("situation", _STR)])),
    ("glan", pa.struct([("taxonomy_path", pa.list_(_STR)), ("subject", _STR), ("level", _STR), ("mode", _STR),
                        ("sessions", pa.list_(pa.struct([("number", pa.int64()), ("title", _STR)]))),
                        ("concepts", pa.list_(pa.struct([("session", pa.int64()), ("concept", _STR)])))])),
    ("compositions", pa.struct([("ability", _STR), ("knowledge", _STR), ("extra_information", _STR),
                                ("expected_output", _STR)])),
    ("judge", pa.struct([("scores", pa.struct([])), ("total", pa.int64()), ("analysis", _STR)])),
    ("dedup", pa.struct([("decision", _STR), ("nearest_id", _STR), ("similarity", pa.float64())])),
    ("lineage", pa.struct([("document_id", _STR), ("seed_ids", pa.list_(_STR)), ("stages", pa.list_(_STAMP)),
                           ("details", pa.struct([]))])),
    ("meta", pa.struct([])),
])

# What each field holds, for the dataset card (and the README's schema table).
FIELD_DOCS: dict[str, str] = {
    "export_schema_version": f"version of this row layout ({EXPORT_SCHEMA_VERSION})",
    "id": "sample id (deterministic: same input, stage versions and models give the same id)",
    "instruction_id": "id of the kept instruction the sample answers (what `dedup.nearest_id` names)",
    "root_id": "id of the record the chain started from (the document, or the GLAN discipline)",
    "method": "`synthquestions` or `glan`",
    "simulated": "true when any stage was answered by the LLM simulator",
    "created_at": "when the sample was made (seconds since the epoch)",
    "messages": "the chat: the user's instruction and the assistant's answer",
    "instruction": "the instruction (the user's turn)",
    "model": "the model that answered (as the endpoint named it)",
    "models": "stage -> model that answered it, for the stages that called an LLM",
    "stage_versions": "stage -> version (prompt version and text digest, plus a replay version)",
    "document": "the source document: id, title, url, source; for a part of a long page its page_id (the whole "
                "document's id), part (1-based) and parts (count), else null (null for GLAN)",
    "seeds": "the real user instructions shown as examples: id, instruction",
    "situation": "the invented user, circumstances, motivation and situation (null for GLAN)",
    "glan": "GLAN: taxonomy path, subject, level, question mode, sessions and concepts drawn",
    "compositions": "what the instruction is made of: ability, knowledge, extra information, expected output",
    "judge": "the rubric: 0/1 per criterion (scores), their total, the judge's analysis",
    "dedup": "the dedup decision (kept), the nearest kept instruction's id and its cosine similarity",
    "lineage": "document_id, seed_ids, stages (stage, version, model) and every stage's details as stored",
    "meta": "the sample's own meta as stored",
}


def sample_view(envelope: dict[str, Any]) -> dict[str, Any]:
    """The export row of one stored sample envelope (a dict as stored): nested objects, nulls for
    what an older sample lacks."""
    data = envelope.get("data") or {}
    lineage = envelope.get("lineage") or {}
    details = lineage.get("details") or {}
    meta = data.get("meta") or {}
    stamps = [{"stage": s.get("stage"), "version": s.get("version"), "model": s.get("model")}
              for s in lineage.get("stages") or []]
    models = {s["stage"]: s["model"] for s in stamps if s["model"]}
    glan = envelope.get("method") == "glan" or "taxonomy_path" in details
    return {
        "export_schema_version": EXPORT_SCHEMA_VERSION,
        "id": envelope["id"],
        "instruction_id": envelope.get("parent_id"),
        "root_id": envelope.get("root_id"),
        "method": envelope.get("method"),
        "simulated": bool(envelope.get("simulated")),
        "created_at": envelope.get("created_at"),
        "messages": [{"role": "user", "content": data.get("instruction")},
                     {"role": "assistant", "content": data.get("response")}],
        "instruction": data.get("instruction"),
        "model": models.get("answer") or next(reversed(models.values()), None),
        "models": models,
        "stage_versions": {s["stage"]: s["version"] for s in stamps},
        "document": None if glan else _document(lineage, details),
        "seeds": _seeds(lineage, details),
        "situation": _pick(details.get("situation"), "user", "circumstances", "motivation", "situation"),
        "glan": _glan(details) if glan else None,
        "compositions": meta.get("compositions") or None,
        "judge": _judge(details, meta),
        "dedup": _pick(details.get("dedup"), "decision", "nearest_id", "similarity"),
        "lineage": {"document_id": lineage.get("document_id"), "seed_ids": list(lineage.get("seed_ids") or []),
                    "stages": stamps, "details": details},
        "meta": meta,
    }


def _pick(obj: Any, *keys: str) -> dict[str, Any] | None:
    return {key: obj.get(key) for key in keys} if isinstance(obj, dict) else None


def _document(lineage: dict[str, Any], details: dict[str, Any]) -> dict[str, Any] | None:
    doc = details.get("document") if isinstance(details.get("document"), dict) else {}
    document_id = lineage.get("document_id")
    if document_id is None and not doc:
        return None
    return {"id": document_id, "title": doc.get("title"), "url": doc.get("url"),
            "source": doc.get("source") or details.get("document_source"),
            "page_id": doc.get("page_id"), "part": doc.get("part"), "parts": doc.get("parts")}


def _seeds(lineage: dict[str, Any], details: dict[str, Any]) -> list[dict[str, Any]]:
    """The example seeds: with their text where the sample carries it, else their ids alone."""
    carried = {s.get("id"): s.get("instruction") for s in details.get("seeds") or [] if isinstance(s, dict)}
    return [{"id": seed_id, "instruction": carried.get(seed_id)} for seed_id in lineage.get("seed_ids") or []]


def _glan(details: dict[str, Any]) -> dict[str, Any]:
    path = list(details.get("taxonomy_path") or [])
    sampling = details.get("sampling") if isinstance(details.get("sampling"), dict) else {}
    return {"taxonomy_path": path, "subject": path[3] if len(path) > 3 else None, "level": details.get("level"),
            "mode": sampling.get("mode"), "sessions": sampling.get("sessions") or [],
            "concepts": sampling.get("concepts") or []}


def _judge(details: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
    judge = details.get("judge")
    if isinstance(judge, dict):
        return _pick(judge, "scores", "total", "analysis")
    total = details.get("judge_score", meta.get("judge_score"))
    return None if total is None else {"scores": None, "total": total, "analysis": None}


def version_names(version: str) -> set[str]:
    """The names a stage version answers to: itself (`2-0a1b2c3d+hot`), its prompt label
    (`2-0a1b2c3d`), its prompt file's version (`2`) and its replay version (`hot`)."""
    label, _, replay = version.partition("+")
    return {version, label, label.split("-")[0], *([replay] if replay else [])}


def stages_under(row: dict[str, Any], version: str, stage: str | None = None) -> set[str]:
    """The stages (only `stage`, when given) that made this row under `version` (any of its names)."""
    return {stamp["stage"] for stamp in row["lineage"]["stages"]
            if stamp.get("version") and (stage is None or stamp["stage"] == stage)
            and version in version_names(stamp["version"])}
