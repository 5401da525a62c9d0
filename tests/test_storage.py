"""Store files: one file per batch, named by topic incarnation, never replaced by other records
(the export's tests are in tests/test_export.py)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from streamer.records import Envelope, Lineage, Sample, StageStamp, derived_id
from streamer.storage.sink import ROW_SCHEMA, StoreConflictError, write_new_or_same
from streamer.storage.store import file_name

TOPIC = "synth.samples"


def sample_envelope(n: int) -> Envelope:
    root = f"doc{n:04d}"
    stamp = StageStamp(stage="standin", version="1-abc", model="m")
    return Envelope(
        id=derived_id(root, "standin", "1-abc@m"), kind="sample", root_id=root, parent_id=root,
        method="standin", simulated=True, lineage=Lineage(document_id=root, stages=[stamp]),
        data=Sample(instruction=f"question {n}", response=f"answer {n}").model_dump(),
    )


def batch_table(partition: int, first_offset: int, envelopes: list[Envelope]) -> pa.Table:
    rows = [{"id": e.id, "root_id": e.root_id, "kind": e.kind, "method": e.method, "simulated": e.simulated,
             "created_at": e.created_at, "topic": "samples", "partition": partition, "offset": first_offset + i,
             "envelope": e.to_bytes().decode()} for i, e in enumerate(envelopes)]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def store_batch(store, partition: int, first_offset: int, envelopes: list[Envelope],
                incarnation: str = "incarnation-a") -> None:
    path = store / TOPIC / file_name(TOPIC, incarnation, partition, first_offset)
    write_new_or_same(path, batch_table(partition, first_offset, envelopes))


def test_redelivered_batch_rewrites_the_same_file(tmp_path):
    store = tmp_path / "store"
    store_batch(store, 2, 10, [sample_envelope(1)])
    store_batch(store, 2, 10, [sample_envelope(1), sample_envelope(2)])  # same first offset
    files = list((store / TOPIC).glob("*.parquet"))
    assert [f.name for f in files] == [file_name(TOPIC, "incarnation-a", 2, 10)]
    assert files[0].name.startswith("synth.samples-i") and files[0].name.endswith("-p0002-o000000000010.parquet")
    assert len(pd.read_parquet(files[0])) == 2
    assert not list((store / TOPIC).glob("*.tmp*"))


def test_a_new_topic_incarnation_writes_new_files_beside_the_old(tmp_path):
    store = tmp_path / "store"
    store_batch(store, 0, 0, [sample_envelope(1), sample_envelope(2)], incarnation="first-broker")
    before = {f.name: f.read_bytes() for f in (store / TOPIC).glob("*.parquet")}
    # The broker came back empty: offsets start at 0 again, with other records.
    store_batch(store, 0, 0, [sample_envelope(7)], incarnation="second-broker")
    after = {f.name: f.read_bytes() for f in (store / TOPIC).glob("*.parquet")}
    assert len(after) == 2 and all(after[name] == data for name, data in before.items())


def test_a_stored_file_is_never_replaced_by_other_records(tmp_path):
    store = tmp_path / "store"
    store_batch(store, 0, 0, [sample_envelope(1), sample_envelope(2)])
    (path,) = (store / TOPIC).glob("*.parquet")
    stored = path.read_bytes()
    with pytest.raises(StoreConflictError, match=r"refusing to overwrite .*offset 0"):
        store_batch(store, 0, 0, [sample_envelope(5), sample_envelope(2)])
    with pytest.raises(StoreConflictError, match="offset 1"):
        store_batch(store, 0, 0, [sample_envelope(1), sample_envelope(3), sample_envelope(4)])
    assert path.read_bytes() == stored and not list((store / TOPIC).glob("*.tmp*"))
    # A redelivery of the same records, cut shorter or longer, may rewrite it.
    store_batch(store, 0, 0, [sample_envelope(1)])
    assert len(pd.read_parquet(path)) == 1


def test_the_store_finds_any_record_by_id_through_its_index_and_keeps_up_with_new_files(tmp_path):
    from streamer.storage import store

    root = tmp_path / "store"
    first, later = [sample_envelope(n) for n in range(3)], sample_envelope(3)
    store_batch(root, 0, 0, first)
    index = store.IdIndex(root)
    assert index.find(first[1].id, "synth.") == ("samples", first[1].model_dump(mode="json"))
    assert index.find("no-such-id", "synth.") is None
    indexed = set(index.indexed)
    store_batch(root, 1, 0, [later])  # written after the index was built
    assert index.find(later.id, "synth.") == ("samples", later.model_dump(mode="json"))
    assert index.indexed - indexed == {root / TOPIC / file_name(TOPIC, "incarnation-a", 1, 0)}  # only the new file read
    assert store.topics(root, "synth.") == ["samples"]
    assert [p.name for p in store.files(root, TOPIC, incarnation="incarnation-a")] == sorted(
        file_name(TOPIC, "incarnation-a", p, 0) for p in (0, 1))
    assert store.files(root, TOPIC, incarnation="incarnation-b") == []
