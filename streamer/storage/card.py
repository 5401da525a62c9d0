"""The dataset card written beside every export: a Hugging Face dataset card (YAML front matter
with configs and dataset_info features, then what the rows hold, how many of which, and how they
were made).

Where: `README.md` in the export's directory, which is what the Hub and `datasets.load_dataset(dir)`
read. A README.md there that this program did not write (its front matter lacks CARD_MARK) is left
alone and the card goes to `<export stem>.card.md` instead. Several exports in one directory share
the README.md: the last one's card is there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from streamer.storage.samples import EXPORT_SCHEMA_VERSION, FIELD_DOCS
from streamer.storage.selection import ExportResult

CARD_MARK = "# dataset card written by synthstream export"

METHODS = {
    "synthquestions": "SynthQuestions (bottom-up): a crawled document and real user instructions as examples -> "
                      "an invented user and situation -> the instruction that person would send -> rubric "
                      "judge -> semantic dedup -> answer.",
    "glan": "GLAN: a taxonomy of disciplines -> subjects -> syllabi -> homework questions drawn from one or two "
            "class sessions -> rubric judge -> semantic dedup -> answer.",
}

_DTYPES = {"double": "float64", "float": "float32", "bool": "bool", "null": "null"}


def card_path(out: Path) -> Path:
    readme = out.parent / "README.md"
    if not readme.exists() or CARD_MARK in readme.read_text(errors="replace")[:500]:
        return readme
    return out.with_name(f"{out.stem}.card.md")


def write_card(result: ExportResult, generation: dict[str, list[dict[str, Any]]],
               costs: dict[str, Any] | None = None) -> Path:
    """The card; `generation`: per stage, the settings its runs recorded (storage.generation); `costs`:
    what the pipeline's LLM calls cost (streamer.ops.costs)."""
    path = card_path(result.path)
    text = front_matter(result) + "\n" + body(result, generation, costs)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def front_matter(result: ExportResult) -> str:
    counts = result.counts
    tags = ["synthetic", "instruction-tuning", "synthstream", *sorted(counts.methods)]
    if counts.simulated:
        tags.append("simulated")
    meta = {
        "license": "unknown",  # the source documents' and the models' terms apply; synthstream sets none
        "pretty_name": f"synthstream export {result.path.name}",
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [_size_category(counts.rows)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": result.path.name}]}],
        "dataset_info": {"config_name": "default", "features": features(result.schema),
                         "splits": [{"name": "train", "num_examples": counts.rows}]},
        "synthstream": {"export_schema_version": EXPORT_SCHEMA_VERSION, "format": result.fmt},
    }
    return f"---\n{CARD_MARK}\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n"


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    """The schema as a dataset card's `dataset_info.features` (the `datasets` library's YAML form)."""
    return [{"name": f.name, **_feature(f.type)} for f in schema]


def _feature(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_struct(t):
        return {"struct": features(pa.schema(list(t)))}
    if pa.types.is_list(t):
        return {"list": _list_item(t.value_type)}
    return {"dtype": _DTYPES.get(str(t), str(t))}


def _list_item(t: pa.DataType) -> Any:
    if pa.types.is_struct(t):
        return features(pa.schema(list(t)))
    if pa.types.is_list(t):
        return {"list": _list_item(t.value_type)}
    return _DTYPES.get(str(t), str(t))


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def body(result: ExportResult, generation: dict[str, list[dict[str, Any]]],
         costs: dict[str, Any] | None = None) -> str:
    counts = result.counts
    parts = [f"# {result.path.name}\n",
             f"{counts.rows} instruction/response pairs made by synthstream, exported as {result.fmt} "
             f"(export schema version {EXPORT_SCHEMA_VERSION}).\n",
             _simulated_note(counts.rows, counts.simulated),
             "## Fields\n", _fields_table(result.schema),
             "## Counts\n", _counts(result),
             "## Methods\n", "\n".join(f"- `{m}`: {METHODS.get(m, 'not described')}" for m in sorted(counts.methods)),
             "\n## Models\n", _models(result),
             "## Filters\n", _filters(result),
             "## Generation config\n", _config(result, generation),
             *(["## Cost\n", _cost(costs)] if costs and costs.get("stages") else []),
             "## Loading\n", _loading(result)]
    return "\n".join(parts)


def _cost(costs: dict[str, Any]) -> str:
    lines = [f"What the LLM calls of the pipeline's runs on this data dir cost, at the prices configured when they "
             f"ran (all its records, not only the rows exported): **${costs['total_usd']:.4f}**, of which "
             f"${costs['batch_usd']:.4f} in the batch lane.\n",
             "| stage | LLM requests | tokens | cost (USD) | of which batch |", "|---|---|---|---|---|"]
    for stage, c in costs["stages"].items():
        lines.append(f"| {stage} | {c['requests']} | {c['tokens']} | {c['cost_usd']:.4f} | {c['batch_cost_usd']:.4f} |")
    return "\n".join(lines) + "\n"


def _simulated_note(rows: int, simulated: int) -> str:
    if simulated == rows:
        return ("**Simulated: every row was made by synthstream's LLM simulator** (placeholder text, random rubric "
                "scores). It shows the pipeline and the format; it is not training data.\n")
    if simulated:
        return f"**{simulated} of {rows} rows are simulated** (field `simulated`): leave them out of training.\n"
    return "Made by real models (no row is simulated).\n"


def _fields_table(schema: pa.Schema) -> str:
    lines = ["| field | type | holds |", "|---|---|---|"]
    for f in schema:
        lines.append(f"| `{f.name}` | `{_short_type(f.type)}` | {FIELD_DOCS.get(f.name, '')} |")
    return "\n".join(lines) + "\n"


def _short_type(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "object{" + ", ".join(f.name for f in t) + "}" if t.num_fields <= 8 else f"object ({t.num_fields} fields)"
    if pa.types.is_list(t):
        return f"list[{_short_type(t.value_type)}]"
    return _DTYPES.get(str(t), str(t))


def _table(title: str, counter: Any) -> str:
    lines = [f"| {title} | rows |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in counter.most_common()]
    return "\n".join(lines) + "\n"


def _counts(result: ExportResult) -> str:
    counts = result.counts
    return "\n".join([
        f"- rows: {counts.rows}", f"- simulated rows: {counts.simulated}",
        f"- samples stored before filters: {result.stored} "
        f"({result.skipped_duplicates} redelivered copies collapsed)\n",
        _table("method", counts.methods), _table("model (answering)", counts.models)])


def _models(result: ExportResult) -> str:
    lines = ["| stage | model that answered | rows |", "|---|---|---|"]
    lines += [f"| {stage} | {model} | {n} |" for (stage, model), n in sorted(result.counts.stage_models.items())]
    return "\n".join(lines) + "\n"


def _filters(result: ExportResult) -> str:
    given = result.filters.describe()
    if not given:
        return f"None: all {result.stored} stored samples.\n"
    lines = [f"- `{name} {value}`" for name, value in given.items()]
    if result.filters.since is not None:  # "1h" alone would say nothing next week: the time it meant
        lines.append(f"- made at or after {datetime.fromtimestamp(result.filters.since, UTC):%Y-%m-%d %H:%M:%S} UTC")
    return "\n".join(lines) + f"\n\n{result.counts.rows} of {result.stored} stored samples selected.\n"


def _config(result: ExportResult, generation: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["Stage versions (prompt version and text digest, `+V` for a replay version) in the rows:\n",
             "| stage | version | rows |", "|---|---|---|"]
    lines += [f"| {stage} | {version} | {n} |" for (stage, version), n in sorted(result.counts.stage_versions.items())]
    unrecorded = sorted({stage for stage, _ in result.counts.stage_versions} - set(generation))
    lines += ["", "Settings the runs that made the rows recorded, per stage, under the versions above (LLM endpoint, "
              "sampling, options; API keys are never recorded). A stage listed with several ran with each:", ""]
    if generation:
        lines += ["```yaml", yaml.safe_dump(generation, sort_keys=False, allow_unicode=True).rstrip(), "```"]
    if unrecorded:
        lines += ["", f"Not recorded for {', '.join(unrecorded)} (made before synthstream recorded its runs' "
                      "settings, or in another data dir)."]
    return "\n".join(lines) + "\n"


def _loading(result: ExportResult) -> str:
    loader = "parquet" if result.fmt == "parquet" else "json"
    return ("```python\nfrom datasets import load_dataset\n\n"
            f"ds = load_dataset(\"{loader}\", data_files=\"{result.path.name}\", split=\"train\")\n"
            "ds[0][\"judge\"][\"scores\"], ds[0][\"document\"][\"title\"], ds[0][\"lineage\"][\"stages\"]\n```\n")
