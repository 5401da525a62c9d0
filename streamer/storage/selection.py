"""What an export selects (its filters) and what it holds (its counts, its result): shared by the
export that fills them and the dataset card that reports them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from streamer.storage.samples import stages_under

Format = Literal["jsonl", "parquet"]


@dataclass(frozen=True)
class ExportFilters:
    """Which samples to export; every filter given must hold."""

    method: str | None = None
    min_score: int | None = None  # judge total at least this
    version: str | None = None  # STAGE=VERSION: that stage ran under VERSION; a bare VERSION: any one stage
    since: float | None = None  # made at or after this time (seconds since the epoch)
    since_text: str | None = None  # as the user gave it, for the card

    def matches(self, row: dict[str, Any]) -> bool:
        if self.method is not None and row["method"] != self.method:
            return False
        if self.min_score is not None:
            total = (row["judge"] or {}).get("total")
            if total is None or total < self.min_score:
                return False
        if self.version is not None and not self.version_stages(row):
            return False
        return self.since is None or (row["created_at"] or 0) >= self.since

    def version_stages(self, row: dict[str, Any]) -> set[str]:
        """The stages that made this row under the `--version` asked for."""
        stage, sep, version = (self.version or "").rpartition("=")
        return stages_under(row, version, stage if sep else None)

    def describe(self) -> dict[str, Any]:
        """The filters given, as the command line names them."""
        given = {"--method": self.method, "--min-score": self.min_score, "--version": self.version,
                 "--since": self.since_text or self.since}
        return {name: value for name, value in given.items() if value is not None}


@dataclass
class ExportCounts:
    """What the export holds, for the dataset card and the command's summary."""

    rows: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)  # the answering model
    stage_models: Counter[tuple[str, str]] = field(default_factory=Counter)
    stage_versions: Counter[tuple[str, str]] = field(default_factory=Counter)
    simulated: int = 0
    version_stages: set[str] = field(default_factory=set)  # the stage(s) `--version` selected by

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.methods[row["method"] or "unknown"] += 1
        self.models[row["model"] or "unknown"] += 1
        self.simulated += row["simulated"]
        for stamp in row["lineage"]["stages"]:
            self.stage_versions[(stamp["stage"], stamp["version"])] += 1
            if stamp["model"]:
                self.stage_models[(stamp["stage"], stamp["model"])] += 1


@dataclass
class ExportResult:
    path: Path
    fmt: Format
    stored: int  # distinct samples in the store, before filters
    skipped_duplicates: int  # redelivered copies collapsed
    counts: ExportCounts
    schema: pa.Schema
    filters: ExportFilters
    card: Path | None = None

    @property
    def rows(self) -> int:
        return self.counts.rows


class AmbiguousVersionError(ValueError):
    """A bare `--version V` that several stages ran under: V alone does not say which samples."""

    def __init__(self, version: str, stages: set[str]) -> None:
        first = sorted(stages)[0]
        super().__init__(f"--version {version} is a version of several stages ({', '.join(sorted(stages))}): "
                         f"name the stage, e.g. --version {first}={version}")
