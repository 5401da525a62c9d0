"""Reading the store and exporting a training-ready dataset (chat `messages` format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

EXPORT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("method", pa.string()),
    ("model", pa.string()),
    ("simulated", pa.bool_()),
    ("root_id", pa.string()),
    ("document_id", pa.string()),
    ("seed_ids", pa.list_(pa.string())),
    ("stage_versions", pa.string()),
    ("lineage", pa.string()),
    ("meta", pa.string()),
    ("created_at", pa.float64()),
])


def iter_stored(store_dir: Path, topic: str) -> Iterator[dict[str, Any]]:
    """Stored rows of one (prefixed) topic, file by file (files in offset order), never all at once."""
    for path in sorted((store_dir / topic).glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            yield from batch.to_pylist()


def iter_envelopes(store_dir: Path, topic: str, *, unique: bool = True) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for row in iter_stored(store_dir, topic):
        if unique:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
        try:
            yield orjson.loads(row["envelope"])
        except orjson.JSONDecodeError:
            continue


def sample_row(env: dict[str, Any]) -> dict[str, Any]:
    data, lineage = env["data"], env.get("lineage") or {}
    stages = lineage.get("stages") or []
    models = [s.get("model") for s in stages if s.get("model")]
    return {
        "id": env["id"],
        "messages": [{"role": "user", "content": data["instruction"]},
                     {"role": "assistant", "content": data["response"]}],
        "method": env.get("method"),
        "model": models[-1] if models else None,
        "simulated": bool(env.get("simulated")),
        "root_id": env.get("root_id"),
        "document_id": lineage.get("document_id"),
        "seed_ids": list(lineage.get("seed_ids") or []),
        "stage_versions": orjson.dumps(stages).decode(),
        "lineage": orjson.dumps(lineage).decode(),
        "meta": orjson.dumps(data.get("meta") or {}).decode(),
        "created_at": env.get("created_at"),
    }


@dataclass
class ExportResult:
    path: Path
    rows: int
    skipped_duplicates: int


def export_samples(
    store_dir: Path, topic: str, out: Path, fmt: Literal["jsonl", "parquet"] = "jsonl", method: str | None = None,
    batch_rows: int = 1000,
) -> ExportResult:
    """One row per sample id; streams, so memory stays flat for any dataset size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    seen: set[str] = set()
    rows = duplicates = 0
    batch: list[dict[str, Any]] = []
    writer: pq.ParquetWriter | None = None
    with open(tmp, "wb") as jsonl:
        if fmt == "parquet":
            writer = pq.ParquetWriter(jsonl, EXPORT_SCHEMA)

        def flush() -> None:
            if writer is not None and batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=EXPORT_SCHEMA))
            batch.clear()

        for env in iter_envelopes(store_dir, topic, unique=False):
            if env["id"] in seen:
                duplicates += 1
                continue
            seen.add(env["id"])
            if method and env.get("method") != method:
                continue
            row = sample_row(env)
            rows += 1
            if writer is None:
                jsonl.write(orjson.dumps(row) + b"\n")
            else:
                batch.append(row)
                if len(batch) >= batch_rows:
                    flush()
        flush()
        if writer is not None:
            writer.close()
    tmp.replace(out)
    return ExportResult(out, rows, duplicates)
