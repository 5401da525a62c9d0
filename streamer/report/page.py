"""The report page (index.html) and the command's headline, from the figures of summary.json.

The markup and the style are in page.html beside this module (package data), as named
`string.Template` fragments; this module only chooses the values and fills the fragments in.
Every value goes through `html.escape`, except markup made by filling in other fragments.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from streamer.report.figures import CHARTS, SCORE_OUTCOMES, SCORE_RANGE

CHART_CAPTIONS = {
    "outcomes.png": "Where every stored instruction ended (kept as a sample, rejected by the judge, dropped by "
                    "dedup, or dead-lettered) and samples per generation method.",
    "judge_scores.png": "Rubric totals of every instruction the judge scored, stacked by what happened next.",
    "instruction_length.png": "Length of the sampled instructions in words, per method; dashed lines: medians.",
    "diversity.png": "Left: cosine similarity of every pair in the diversity sample. Right: size of each topic "
                     "cluster (see Diversity).",
    "dedup_similarity.png": "For near-duplicates dedup dropped: how similar each was to the instruction it kept.",
}

_TEMPLATE = "page.html"
_FRAGMENT_LINE = re.compile(r"^<!-- fragment: (\w+) -->\n", re.MULTILINE)


class Markup(str):
    """HTML made by filling in fragments: inserted as it is, where any other value is escaped."""


@functools.cache
def fragments() -> dict[str, Template]:
    """page.html's fragments by name (the text before the first one is a comment for its readers)."""
    text = resources.files("streamer.report").joinpath(_TEMPLATE).read_text(encoding="utf-8")
    _comment, *named = _FRAGMENT_LINE.split(text)
    return {name: Template(body.rstrip("\n")) for name, body in zip(named[::2], named[1::2])}


def fill(fragment: str, /, **values: Any) -> Markup:
    """The named fragment with its $placeholders replaced by `values`, escaped unless Markup."""
    escaped = {key: value if isinstance(value, Markup) else html.escape(str(value)) for key, value in values.items()}
    return Markup(fragments()[fragment].substitute(escaped))


def _join(parts: Iterable[Markup], separator: str = "") -> Markup:
    return Markup(separator.join(parts))


# The page ----------------------------------------------------------------------------------------
def render_html(figures: dict[str, Any]) -> str:
    banner = fill("banner", simulated=figures["simulated_samples"], samples=figures["samples"]) \
        if figures["simulated_samples"] else Markup()
    method = fill("method", method=figures["method"]) if figures["method"] else Markup()
    page = fill("page", banner=banner, store=figures["store"], topic_prefix=figures["topic_prefix"], method=method,
                generated_at=figures["generated_at"], tables=_join(_tables(figures), "\n"),
                diversity=_diversity_section(figures["diversity"]), charts=_charts_section())
    return f"{page}\n"


def _tables(figures: dict[str, Any]) -> list[Markup]:
    rates, div, words = figures["rates"], figures["diversity"], figures["instruction_words"]
    return [
        _table("Headline", ["figure", "value"], [
            ("samples", figures["samples"]),
            ("judge rejection rate", _pct(rates["judge_rejection_rate"], rates["judge_rejected"], rates["judged"])),
            ("dedup duplicate rate",
             _pct(rates["dedup_duplicate_rate"], rates["dedup_duplicates"], rates["dedup_checked"])),
            ("median instruction length", f"{words['median']} words"),
            ("mean pairwise cosine distance", div["mean_pairwise_cosine_distance"]),
            ("topic clusters in the sample", f"{div['topic_clusters']} of {div['sample_size']} sampled"),
        ]),
        _table("Samples by method", ["method", "samples"], figures["samples_by_method"].items()),
        _table("Stored records by topic (all methods)", ["topic", "records", "stored rows (with redelivered copies)"],
               [(t, c["unique"], c["rows"]) for t, c in figures["stored"].items()]),
        _table("Samples by stage version", ["stage", "version", "model", "samples"],
               [(v["stage"], v["version"], v["model"] or "-", v["samples"]) for v in figures["stage_versions"]],
               note="From each sample's lineage; a replay with a new prompt or model shows as a second version."),
        _table("Rejected and dead-lettered by stage", ["stage", "outcome", "records"],
               [(s, k, n) for s, kinds in figures["rejected_by_stage"].items() for k, n in kinds.items()]
               + [(s, "dead letter", n) for s, n in figures["dlq_by_stage"].items()]),
        _table("Judge scores", ["score", *SCORE_OUTCOMES],
               [(s, *(figures["judge_scores"][o][str(s)] for o in SCORE_OUTCOMES)) for s in SCORE_RANGE]),
        _table("Instruction length (words)", list(words), [tuple(words.values())]),
        *_cost_table(figures.get("llm_cost")),
    ]


def _cost_table(costs: dict[str, Any] | None) -> list[Markup]:
    if not costs or not costs.get("stages"):
        return []
    rows = [(stage, c["requests"], c["tokens"], f"${c['cost_usd']:.4f}", f"${c['batch_cost_usd']:.4f}")
            for stage, c in costs["stages"].items()]
    rows.append(("total", "", "", f"${costs['total_usd']:.4f}", f"${costs['batch_usd']:.4f}"))
    return [_table("LLM cost by stage", ["stage", "LLM requests", "tokens", "cost", "of which batch lane"], rows,
                   note="Every run of the pipeline on this data dir, at the prices configured when it ran.")]


def _diversity_section(div: dict[str, Any]) -> Markup:
    largest = _table("Largest topic clusters", ["instructions", "most central instruction"],
                     [(c["size"], c["example"][:200]) for c in div["largest_clusters"]])
    return fill("diversity", sample_size=div["sample_size"], seed=div["seed"], model=div["model"],
                topic_similarity=div["topic_similarity"], singleton_clusters=div["singleton_clusters"],
                topic_clusters=div["topic_clusters"], largest_clusters=largest)


def _charts_section() -> Markup:
    return fill("charts", figures=_join(fill("figure", name=name, caption=CHART_CAPTIONS[name]) for name in CHARTS))


def _table(title: str, header: list[str], rows: Iterable[Iterable[Any]], note: str = "") -> Markup:
    head = _join(fill("header_cell", text=h) for h in header)
    body = _join(fill("row", cells=_join(fill("cell", text=c) for c in row)) for row in rows)
    return fill("table", title=title, head=head, rows=body or fill("no_rows", columns=len(header)),
                note=fill("note", text=note) if note else Markup())


def _pct(rate: float | None, part: int, whole: int) -> str:
    return "n/a (nothing judged)" if rate is None else f"{rate:.1%} ({part} of {whole})"


# The command's headline (plain text) --------------------------------------------------------------
def headline(figures: dict[str, Any], out: Path) -> str:
    rates, div = figures["rates"], figures["diversity"]
    simulated = f" ({figures['simulated_samples']} simulated)" if figures["simulated_samples"] else ""
    methods = ", ".join(f"{m} {n}" for m, n in figures["samples_by_method"].items())
    return "\n".join([
        f"report: {out / 'index.html'} (charts and summary.json beside it)",
        f"  samples: {figures['samples']}{simulated}; by method: {methods}",
        (f"  judge rejected {_pct(rates['judge_rejection_rate'], rates['judge_rejected'], rates['judged'])}; "
         f"dedup duplicates {_pct(rates['dedup_duplicate_rate'], rates['dedup_duplicates'], rates['dedup_checked'])}"),
        (f"  median instruction length {figures['instruction_words']['median']} words; "
         f"mean pairwise cosine distance {div['mean_pairwise_cosine_distance']}; "
         f"{div['topic_clusters']} topic clusters in a sample of {div['sample_size']}"),
    ])
