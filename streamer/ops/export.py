"""`synthstream export` (and the demo's export): where the store is, the generation config for the
dataset card, and an empty export that says where it looked."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamer.config import Settings
from streamer.storage.export import EmptyExportError, ExportFilters, ExportResult, Format, export_samples

LLM_CARD_KEYS = ("model", "temperature", "top_p", "max_tokens", "seed")


def export_dataset(settings: Settings, out: Path, fmt: Format = "jsonl",
                   filters: ExportFilters | None = None) -> ExportResult:
    """The stored samples of `settings` (data dir, topic prefix) to `out`, with the dataset card."""
    store_dir = settings.storage.store_dir
    topic = f"{settings.kafka.topic_prefix}samples"
    try:
        return export_samples(store_dir, topic, out, fmt, filters, card_config=generation_config(settings))
    except EmptyExportError as empty:
        empty.hint = other_stores_hint(settings.storage.data_dir, topic, exclude=store_dir)
        raise


def generation_config(settings: Settings) -> dict[str, Any]:
    """The settings that shape the samples, per stage: version, LLM sampling, options. Never a key."""
    from consumers import PIPELINE

    stages: dict[str, Any] = {}
    for stage in PIPELINE:
        bound = stage.bind(settings)
        entry: dict[str, Any] = {"version": bound.version}
        if stage.prompt is not None:
            llm = bound.settings.llm
            entry["llm"] = {key: getattr(llm, key) for key in LLM_CARD_KEYS}
        options = bound.options.model_dump(mode="json")
        if options:
            entry["options"] = options
        stages[stage.name] = entry
    return {"llm_endpoint": endpoint_of(settings.llm.base_url), "stages": stages}


def endpoint_of(base_url: str | None) -> str:
    """The endpoint without anything secret a URL can hold (user:password@, a query with a key)."""
    if not base_url:
        return "none configured (the demo's simulator)"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def other_stores_hint(data_dir: Path, topic: str, *, exclude: Path) -> str:
    """Where else samples are stored (the demo keeps its own data dir under the configured one)."""
    found = []
    for store in sorted(data_dir.glob("*/store")):
        samples = store / topic
        if store != exclude and samples.is_dir() and any(samples.glob("*.parquet")):
            found.append(store.parent)
    if not found:
        return ""
    return "; samples are stored under " + ", ".join(f"{d} (add --data-dir {d})" for d in found)
