"""What made the stored rows: each stage's generation settings (version, LLM endpoint and sampling,
options), recorded by every process that runs the stage, read back for export's dataset card. The
card so states the settings of the runs that made the data, not those of the shell that exports.

Layout: `<data_dir>/generation/<stage>/<version>-<digest of the settings>.json`, one file per distinct
set of settings a stage ran with under a version (written once; a restart with the same ones finds it).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

LLM_CARD_KEYS = ("model", "temperature", "top_p", "max_tokens", "seed")


def generation_dir(data_dir: Path) -> Path:
    return data_dir / "generation"


def endpoint_of(base_url: str | None) -> str:
    """The endpoint without anything secret a URL can hold (user:password@, a query with a key)."""
    if not base_url:
        return "none configured (the demo's simulator)"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def record_generation(data_dir: Path, stage: str, settings: dict[str, Any]) -> Path:
    """Keep `settings` (with `version`) as what `stage` runs with; the same ones are kept once."""
    body = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    path = generation_dir(data_dir) / stage / f"{settings['version']}-{hashlib.sha256(body).hexdigest()[:12]}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(orjson.dumps({"stage": stage, "recorded_at": time.time(), "settings": settings}))
        partial.replace(path)  # whole or absent, also with workers starting together
    return path


def recorded_generation(data_dir: Path, stage_versions: set[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """For each stage, the settings recorded under the versions in `stage_versions`, oldest first."""
    found: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for stage, version in sorted(stage_versions):
        for path in (generation_dir(data_dir) / stage).glob("*.json"):
            try:
                entry = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            if entry.get("settings", {}).get("version") == version:
                found.setdefault(stage, []).append((entry.get("recorded_at", 0.0), entry["settings"]))
    return {stage: [settings for _, settings in sorted(entries, key=lambda e: e[0])]
            for stage, entries in found.items()}
