"""Reading the store and exporting a training-ready dataset (chat `messages` plus each sample's
chain as nested objects), with its dataset card.

The export makes one pass over the store: each selected sample's row (streamer.storage.samples)
goes to a scratch file while the rows' Arrow type is inferred; a second pass over the scratch
file writes JSONL or Parquet with that one schema, so every row has every field (null where a
sample lacks it) and both formats hold the same thing. Memory stays flat for any dataset size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from streamer.storage import store
from streamer.storage.card import write_card
from streamer.storage.generation import recorded_generation
from streamer.storage.nested import batch_type, merge, to_table, writable
from streamer.storage.samples import DECLARED_SCHEMA, EXPORT_SCHEMA_VERSION, sample_view
from streamer.storage.selection import AmbiguousVersionError, ExportCounts, ExportFilters, ExportResult, Format

__all__ = ["EXPORT_SCHEMA_VERSION", "AmbiguousVersionError", "EmptyExportError", "ExportFilters", "ExportResult",
           "Format", "export_samples", "sample_view"]


class EmptyExportError(Exception):
    """No sample was selected: says where samples were looked for and what the filters left."""

    def __init__(self, store_dir: Path, topic: str, stored: int, filters: ExportFilters) -> None:
        self.store_dir, self.topic, self.stored, self.filters = store_dir, topic, stored, filters
        self.hint = ""
        super().__init__()

    def __str__(self) -> str:
        where = self.store_dir / self.topic
        if not where.is_dir():
            found = f"no samples stored: {where} does not exist"
        elif self.stored == 0:
            found = f"no samples stored in {where}"
        else:
            given = " ".join(f"{k} {v}" for k, v in self.filters.describe().items())
            found = f"none of the {self.stored} samples in {where} passes the filters ({given})"
        return f"nothing exported: {found} (store {self.store_dir}, topic {self.topic}){self.hint}"


def export_samples(store_dir: Path, topic: str, out: Path, fmt: Format = "jsonl",
                   filters: ExportFilters | None = None, *, method: str | None = None,
                   data_dir: Path | None = None, batch_rows: int = 1000,
                   costs: dict[str, Any] | None = None) -> ExportResult:
    """One row per sample id, the dataset card beside it. Raises EmptyExportError (and writes
    nothing) when no sample is selected."""

    filters = filters or ExportFilters(method=method)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(out.name + ".rows.partial")
    try:
        stored, duplicates, counts, schema = _select(store_dir, topic, filters, scratch, batch_rows)
        if counts.rows == 0:
            raise EmptyExportError(store_dir, topic, stored, filters)
        partial = out.with_name(out.name + ".partial")
        _write(scratch, partial, fmt, schema, batch_rows)
        partial.replace(out)
    finally:
        scratch.unlink(missing_ok=True)
    result = ExportResult(out, fmt, stored, duplicates, counts, schema, filters)
    # What made the rows: the settings their stages' runs recorded under the versions the rows carry.
    generation = recorded_generation(data_dir, set(counts.stage_versions)) if data_dir is not None else {}
    result.card = write_card(result, generation, costs)
    return result


def _select(store_dir: Path, topic: str, filters: ExportFilters, scratch: Path, batch_rows: int
            ) -> tuple[int, int, ExportCounts, pa.Schema]:
    """Pass one: the selected rows to `scratch` (JSON lines as viewed), counted, their type inferred."""
    seen: set[str] = set()
    duplicates = 0
    counts = ExportCounts()
    row_type: pa.DataType = pa.struct(list(DECLARED_SCHEMA))
    pending: list[dict[str, Any]] = []
    version_stages: set[str] = set()  # which stages a bare --version matched
    with open(scratch, "wb") as lines:
        for env in store.envelopes(store_dir, topic, unique=False):
            if env["id"] in seen:
                duplicates += 1
                continue
            seen.add(env["id"])
            row = sample_view(env)
            if not filters.matches(row):
                continue
            if filters.version is not None:
                version_stages |= filters.version_stages(row)
            counts.add(row)
            lines.write(orjson.dumps(row) + b"\n")
            pending.append(row)
            if len(pending) >= batch_rows:
                row_type = merge(row_type, batch_type(pending))
                pending.clear()
        if pending:
            row_type = merge(row_type, batch_type(pending))
    if len(version_stages) > 1:
        raise AmbiguousVersionError(filters.version or "", version_stages)
    counts.version_stages = version_stages
    return len(seen), duplicates, counts, pa.schema(list(writable(row_type)))


def _write(scratch: Path, out: Path, fmt: Format, schema: pa.Schema, batch_rows: int) -> None:
    """Pass two: every row in the one schema, as JSONL (all fields, nulls included) or Parquet."""
    with open(out, "wb") as sink:
        writer = pq.ParquetWriter(sink, schema) if fmt == "parquet" else None
        for rows in _batches(scratch, batch_rows):
            table = to_table(rows, schema)
            if writer is not None:
                writer.write_table(table)
            else:
                sink.write(b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist()))
        if writer is not None:
            writer.close()


def _batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with open(path, "rb") as lines:
        for line in lines:
            batch.append(orjson.loads(line))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch
