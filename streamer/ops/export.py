"""`synthstream export` (and the demo's export): where the store is and where the runs recorded their
generation settings, and an empty export that says where it looked."""

from __future__ import annotations

from pathlib import Path

from streamer.config import Settings
from streamer.ops.costs import run_costs
from streamer.storage.export import EmptyExportError, ExportFilters, ExportResult, Format, export_samples


def export_dataset(settings: Settings, out: Path, fmt: Format = "jsonl",
                   filters: ExportFilters | None = None) -> ExportResult:
    """The stored samples of `settings` (data dir, topic prefix) to `out`, with the dataset card; the
    card's generation settings are the ones the runs that made the rows recorded (storage.generation)."""
    store_dir = settings.storage.store_dir
    topic = f"{settings.kafka.topic_prefix}samples"
    try:
        return export_samples(store_dir, topic, out, fmt, filters, data_dir=settings.storage.data_dir,
                              costs=run_costs(settings))
    except EmptyExportError as empty:
        empty.hint = other_stores_hint(settings.storage.data_dir, topic, exclude=store_dir)
        raise


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
