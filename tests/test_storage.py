"""Store files and export: one row per id, chat format, loadable by pandas and datasets."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from streamer.records import Envelope, Lineage, Sample, StageStamp, derived_id
from streamer.storage.export import export_samples
from streamer.storage.sink import ROW_SCHEMA, file_name, write_parquet_atomic

TOPIC = "synth.samples"


def sample_envelope(n: int) -> Envelope:
    root = f"doc{n:04d}"
    stamp = StageStamp(stage="standin", version="1-abc", model="m")
    return Envelope(
        id=derived_id(root, "standin", "1-abc@m"), kind="sample", root_id=root, parent_id=root,
        method="standin", simulated=True, lineage=Lineage(document_id=root, stages=[stamp]),
        data=Sample(instruction=f"question {n}", response=f"answer {n}").model_dump(),
    )


def store_batch(store, partition: int, first_offset: int, envelopes: list[Envelope]) -> None:
    rows = [{"id": e.id, "root_id": e.root_id, "kind": e.kind, "method": e.method, "simulated": e.simulated,
             "created_at": e.created_at, "topic": "samples", "partition": partition, "offset": first_offset + i,
             "envelope": e.to_bytes().decode()} for i, e in enumerate(envelopes)]
    path = store / TOPIC / file_name(TOPIC, partition, first_offset)
    write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=ROW_SCHEMA))


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    envs = [sample_envelope(n) for n in range(6)]
    store_batch(store, 0, 0, envs[:3])
    store_batch(store, 0, 3, envs[3:])
    # The same records produced again upstream (a redelivery) land at later offsets.
    store_batch(store, 1, 0, envs[1:3])
    return store


def test_redelivered_batch_rewrites_the_same_file(tmp_path):
    store = tmp_path / "store"
    store_batch(store, 2, 10, [sample_envelope(1)])
    store_batch(store, 2, 10, [sample_envelope(1), sample_envelope(2)])  # same first offset
    files = list((store / TOPIC).glob("*.parquet"))
    assert [f.name for f in files] == ["synth.samples-p0002-o000000000010.parquet"]
    assert len(pd.read_parquet(files[0])) == 2
    assert not list((store / TOPIC).glob("*.tmp*"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_one_row_per_id_in_chat_format_loadable_by_pandas_and_datasets(store, tmp_path, fmt):
    import datasets

    out = tmp_path / f"dataset.{fmt}"
    result = export_samples(store, TOPIC, out, fmt)
    assert (result.rows, result.skipped_duplicates) == (6, 2)

    frame = pd.read_json(out, lines=True) if fmt == "jsonl" else pd.read_parquet(out)
    assert len(frame) == 6 and frame["id"].is_unique
    assert set(frame.columns) >= {"messages", "method", "lineage", "model", "simulated"}

    loader = "json" if fmt == "jsonl" else "parquet"
    ds = datasets.load_dataset(loader, data_files=str(out), split="train")
    assert ds.num_rows == 6
    row = ds[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"].startswith("question")
    assert row["simulated"] is True and row["method"] == "standin" and row["model"] == "m"
    assert json.loads(row["lineage"])["stages"][0]["stage"] == "standin"


def test_export_filters_by_method(store, tmp_path):
    assert export_samples(store, TOPIC, tmp_path / "x.jsonl", method="glan").rows == 0
