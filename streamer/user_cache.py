"""The per-user cache: what this machine user keeps across runs and projects and rebuilds when
missing (the encoder's weights and built graph, the Kafka jars). Standard library only: CI fetches
the Kafka jars with it before any package is installed."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`SYNTHSTREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/synthstream`, else `~/.cache/synthstream`. Not a
    setting: a worker needs it before any configuration is read."""
    configured = os.environ.get("SYNTHSTREAM_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "synthstream"
