"""Arrow types for nested rows whose shape is only known from the data (lineage details, meta, the
judge's criteria): inferred batch by batch and merged, so every row of an export gets one schema.

Merging is lenient: a field missing in some rows is null there, int widens to float, structs take
the union of their fields. A field whose rows disagree beyond that (a number here, a text there)
becomes a string holding the value's JSON text, so one odd record never stops an export.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson
import pyarrow as pa

_NUMBERS = (pa.types.is_integer, pa.types.is_floating)


def infer_type(value: Any) -> pa.DataType:
    """The Arrow type of one JSON-like value."""
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, dict):
        return pa.struct([pa.field(str(k), infer_type(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return pa.list_(merge_all(infer_type(v) for v in value))
    return pa.string()


def batch_type(rows: list[dict[str, Any]]) -> pa.DataType:
    """The struct type of a batch of rows: Arrow's own inference (fast), or row by row where the
    rows disagree in a way it refuses."""
    try:
        return pa.array(rows).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return merge_all(infer_type(row) for row in rows)


def merge_all(types: Iterable[pa.DataType], start: pa.DataType | None = None) -> pa.DataType:
    merged = start or pa.null()
    for t in types:
        merged = merge(merged, t)
    return merged


def merge(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """One type that holds values of both (first type's field order first)."""
    if a.equals(b) or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if _is_number(a) and _is_number(b):
        return pa.float64() if pa.types.is_floating(a) or pa.types.is_floating(b) else pa.int64()
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fields = {f.name: f.type for f in a}
        for f in b:
            fields[f.name] = merge(fields[f.name], f.type) if f.name in fields else f.type
        return pa.struct([pa.field(name, t) for name, t in fields.items()])
    if _is_list(a) and _is_list(b):
        return pa.list_(merge(a.value_type, b.value_type))
    return pa.string()  # disagreeing rows (or large_string and string): the value's JSON text


def _is_number(t: pa.DataType) -> bool:
    return any(check(t) for check in _NUMBERS)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def writable(t: pa.DataType) -> pa.DataType:
    """The type with what Parquet cannot store replaced: a struct with no fields (every row had
    `{}`) becomes null; large strings and lists become plain ones."""
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return pa.null()
        return pa.struct([pa.field(f.name, writable(f.type)) for f in t])
    if _is_list(t):
        return pa.list_(writable(t.value_type))
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def conform(value: Any, t: pa.DataType) -> Any:
    """`value` shaped for type `t`: JSON text where `t` is a string and the value is not one, and null
    where `t` is null (an empty struct). Only needed for rows Arrow refuses as they are."""
    if value is None or pa.types.is_null(t):
        return None
    if pa.types.is_string(t):
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if pa.types.is_struct(t) and isinstance(value, dict):
        return {f.name: conform(value.get(f.name), f.type) for f in t}
    if _is_list(t) and isinstance(value, (list, tuple)):
        return [conform(v, t.value_type) for v in value]
    if pa.types.is_floating(t) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema`; rows that do not fit as they are are conformed first."""
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        row_type = pa.struct(list(schema))
        return pa.Table.from_pylist([conform(row, row_type) for row in rows], schema=schema)
