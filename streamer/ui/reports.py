"""The report's figures and charts, live from the store: `streamer.report` run into a private
directory on request, kept for a short while (it reads the whole store and embeds a sample)."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from streamer.config import Settings
from streamer.ops.query import document_head
from streamer.ui.topics import stored

REPORT_TTL_S = 30.0
HEX_ID = re.compile(r"[0-9a-f]{8,}")  # a record id inside a reason


class LiveReport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out = Path(tempfile.mkdtemp(prefix="synthstream-ui-report-"))
        self.made_at = 0.0
        self.figures: dict[str, Any] | None = None
        self.lock = asyncio.Lock()

    async def get(self, fresh: bool = False) -> dict[str, Any]:
        """The report's summary (as summary.json has it), made again when older than REPORT_TTL_S."""
        async with self.lock:  # one making at a time; the others wait for it
            if fresh or self.figures is None or time.time() - self.made_at > REPORT_TTL_S:
                self.figures = await asyncio.to_thread(self._make)
                self.made_at = time.time()
            return {**self.figures, "made_at": self.made_at}

    def _make(self) -> dict[str, Any]:
        from consumers import STAGES
        from streamer.ops.costs import run_costs
        from streamer.report import ReportError, ReportOptions, make_report

        options = ReportOptions(store_dir=self.settings.storage.store_dir, prefix=self.settings.kafka.topic_prefix,
                                out=self.out, encoder_model=STAGES["embed"].bind(self.settings).options.model,
                                costs=run_costs(self.settings))
        try:
            return make_report(options)
        except ReportError as exc:
            return {"error": str(exc), "charts": []}

    def chart(self, name: str) -> Path | None:
        from streamer.report import CHARTS

        path = self.out / name
        return path if name in CHARTS and path.is_file() else None

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.out, ignore_errors=True)


def rejected_groups(settings: Settings, on_topic: list[dict[str, Any]]) -> dict[str, Any]:
    """Rejections (topic `rejected` and the store, one per id) counted by stage and reason, with a
    few examples of each."""
    seen: dict[str, dict[str, Any]] = {e["id"]: e for e in on_topic if isinstance(e, dict) and e.get("id")}
    for env in stored(settings, "rejected"):
        seen.setdefault(env["id"], env)
    counts: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for env in seen.values():
        data = env.get("data") or {}
        feed_filter = ((env.get("lineage") or {}).get("details") or {}).get("filter")  # the feed's filters
        reason = f"filter {feed_filter}" if feed_filter else reason_kind(str(data.get("reason", "")))
        key = (str(data.get("stage", "?")), reason)
        counts[key] += 1
        if len(examples.setdefault(key, [])) < 5:
            record = data.get("record") if isinstance(data.get("record"), dict) else {}
            examples[key].append({"id": env["id"], "reason": data.get("reason"), "score": data.get("score"),
                                  "document": document_head(record) or None})  # which page, for the feed's
    groups = [{"stage": stage, "reason": reason, "count": n, "examples": examples[(stage, reason)]}
              for (stage, reason), n in counts.most_common()]
    return {"total": len(seen), "groups": groups}


def reason_kind(reason: str) -> str:
    """A reason without its particulars ("near duplicate of 55ee… (0.93)" → "near duplicate of")."""
    head = reason.split(":")[0].split("(")[0]
    words = [w for w in head.split() if not any(ch.isdigit() for ch in w) and not HEX_ID.fullmatch(w)]
    return " ".join(words)[:60] or "unspecified"
