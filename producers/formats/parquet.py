"""Parquet files: one document (or seed) per row, read by record batches; counted from the file's
footer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow.parquet as pq

from producers.formats.base import CountBudget, InputFormat
from producers.items import BadInput, Item, ReadOptions, attempt, item_from_row

_PARQUET_BATCH_ROWS = 256


def read_parquet(path: str, opts: ReadOptions) -> Iterator[Item]:
    with pq.ParquetFile(path) as parquet:
        if opts.text_field not in parquet.schema_arrow.names:
            yield BadInput(path, f"missing text field {opts.text_field!r}")
            return
        rows = itertools.count(1)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                location = f"{path}:{next(rows)}"
                yield attempt(location, item_from_row, row, location, opts)


def count_rows(path: str, budget: CountBudget) -> int:
    return pq.ParquetFile(path).metadata.num_rows


PARQUET = InputFormat("parquet", (".parquet",), read_parquet, count_rows)
