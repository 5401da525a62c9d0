"""`synthstream report`: figures, PNG charts and an HTML summary of the stored dataset.

- `figures` reads the store once and computes the numbers: `collect_stats` (counters and a seeded
  sample of instructions), `measure_diversity` (the real encoder on that sample) and `summary`
  (the dict written to summary.json);
- `charts` draws the PNGs with matplotlib (`render_charts`);
- `page` renders index.html from the page.html template (`render_html`) and the command's
  `headline`;
- `make_report`, here, runs them and writes the files.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamer.report.charts import SIMULATED_NOTE, render_charts
from streamer.report.figures import (
    CHARTS,
    DEDUP_EXACT,
    DEDUP_NEAR,
    JUDGE_REJECTED,
    KEPT,
    SCORE_OUTCOMES,
    SCORE_RANGE,
    Diversity,
    ReportError,
    ReportOptions,
    StoredCount,
    StoreStats,
    check_store,
    collect_stats,
    length_summary,
    measure_diversity,
    pair_similarities,
    summary,
    topic_clusters,
    unique_envelopes,
)
from streamer.report.page import CHART_CAPTIONS, headline, render_html

__all__ = [
    "CHARTS", "CHART_CAPTIONS", "DEDUP_EXACT", "DEDUP_NEAR", "JUDGE_REJECTED", "KEPT", "SCORE_OUTCOMES",
    "SCORE_RANGE", "SIMULATED_NOTE", "Diversity", "ReportError", "ReportOptions", "StoreStats", "StoredCount",
    "check_store", "collect_stats", "headline", "length_summary", "make_report", "measure_diversity",
    "pair_similarities", "render_charts", "render_html", "summary", "topic_clusters", "unique_envelopes",
]


def make_report(options: ReportOptions) -> dict[str, Any]:
    """Collect, measure, draw, write; returns the figures written to summary.json."""
    stats = collect_stats(options)
    diversity = measure_diversity(stats.sampled, options)
    options.out.mkdir(parents=True, exist_ok=True)
    render_charts(stats, diversity, options.out)
    figures = summary(stats, diversity, options)
    (options.out / "summary.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    (options.out / "index.html").write_text(render_html(figures), encoding="utf-8")
    return figures
