"""The report's PNG charts, drawn with matplotlib's object API on the Agg backend (no pyplot
state, no display) from the figures module's `StoreStats` and `Diversity`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from streamer.report.figures import (
    CHARTS,
    DEDUP_EXACT,
    DEDUP_NEAR,
    JUDGE_REJECTED,
    KEPT,
    SCORE_OUTCOMES,
    SCORE_RANGE,
    Diversity,
    StoreStats,
    quantile,
)

SIMULATED_NOTE = "simulated data (LLM simulator): texts, scores and rates are not meaningful"
# Outlined bars: adjacent histogram bins (and touching bars) stay distinguishable.
EDGES = {"edgecolor": "#263238", "linewidth": 0.6}


def render_charts(stats: StoreStats, diversity: Diversity, out: Path) -> list[Path]:
    # The object API renders with Agg without touching pyplot's global state or a display.
    from matplotlib.figure import Figure

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache notices are not news

    simulated = stats.simulated > 0
    drawn = []
    for name, draw in zip(CHARTS, (_chart_outcomes, _chart_judge_scores, _chart_lengths, _chart_diversity,
                                   _chart_dedup_similarity)):
        fig = Figure(figsize=(10, 4.6), layout="constrained")
        draw(fig, stats, diversity)
        if simulated:
            fig.suptitle(SIMULATED_NOTE, color="#b00020", fontsize=10, x=0.99, ha="right")
        fig.savefig(out / name, dpi=100)
        drawn.append(out / name)
    return drawn


def _chart_outcomes(fig, stats: StoreStats, _d: Diversity) -> None:
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    labels = [KEPT, JUDGE_REJECTED, DEDUP_EXACT, DEDUP_NEAR, "dead-lettered\n(any stage)"]
    values = [stats.outcomes[KEPT], stats.outcomes[JUDGE_REJECTED], stats.outcomes[DEDUP_EXACT],
              stats.outcomes[DEDUP_NEAR], sum(stats.dlq.values())]
    _hbars(left, labels, values, ["#2e7d32", "#c62828", "#ef6c00", "#f9a825", "#6a1b9a"])
    left.set_title("Where instructions ended (stored records)")
    left.set_xlabel("records")
    methods = stats.by_method.most_common()
    _hbars(right, [m for m, _ in methods], [n for _, n in methods], ["#1565c0"] * len(methods))
    right.set_title("Samples by method")
    right.set_xlabel("samples")


def _hbars(ax, labels: list[str], values: list[int], colors: list[str]) -> None:
    positions = range(len(labels))
    ax.barh(positions, values, color=colors)
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()  # first label on top
    ax.bar_label(ax.containers[0], padding=3)
    ax.set_xlim(0, max([*values, 1]) * 1.15)
    _counts_axis(ax.xaxis)


def _counts_axis(axis) -> None:
    """Whole-number ticks on an axis of counts (no 2.5 samples)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _chart_judge_scores(fig, stats: StoreStats, _d: Diversity) -> None:
    ax = fig.subplots()
    bottom = np.zeros(len(SCORE_RANGE))
    for outcome, color in zip(SCORE_OUTCOMES, ("#2e7d32", "#c62828", "#ef6c00")):
        heights = np.array([stats.judge_scores[outcome][s] for s in SCORE_RANGE], dtype=float)
        ax.bar(list(SCORE_RANGE), heights, bottom=bottom, color=color, label=f"{outcome} ({int(heights.sum())})",
               **EDGES)
        bottom += heights
    ax.set_xticks(list(SCORE_RANGE))
    ax.set_xlabel("judge score (rubric total, 0-7)")
    ax.set_ylabel("instructions")
    _counts_axis(ax.yaxis)
    ax.set_title(f"Judge score distribution ({stats.judged} judged instructions in storage)")
    ax.legend(loc="upper left")


def _chart_lengths(fig, stats: StoreStats, _d: Diversity) -> None:
    ax = fig.subplots()
    longest = max(max(c) for c in stats.words.values())
    bins = np.histogram_bin_edges([0, longest + 1], bins=min(40, longest + 1))
    for method, lengths in sorted(stats.words.items()):
        values, weights = zip(*sorted(lengths.items()))
        _, _, bars = ax.hist(values, bins=bins, weights=weights, alpha=0.6, label=f"{method} ({sum(weights)})",
                              **EDGES)
        ax.axvline(quantile(lengths, 0.5), linestyle="--", color=bars[0].get_facecolor(), alpha=1, linewidth=1.5)
    ax.set_xlabel("instruction length (words)")
    ax.set_ylabel("samples")
    _counts_axis(ax.yaxis)
    ax.set_title("Instruction length (dashed: median)")
    ax.legend()


def _chart_diversity(fig, _s: StoreStats, diversity: Diversity) -> None:
    left, right = fig.subplots(1, 2)
    if diversity.pair_similarities.size:
        left.hist(diversity.pair_similarities, bins=40, color="#1565c0", **EDGES)
        mean_sim = 1.0 - (diversity.mean_distance or 0.0)
        left.axvline(mean_sim, color="black", linestyle="--", linewidth=1,
                     label=f"mean similarity {mean_sim:.3f}\n= mean distance {diversity.mean_distance:.3f}")
        left.legend()
    left.set_title(f"Pairwise cosine similarity ({diversity.sample_size} sampled instructions)")
    left.set_xlabel("cosine similarity (left = more diverse)")
    left.set_ylabel("pairs")
    sizes = [size for size, _ in diversity.clusters]
    right.bar(range(1, len(sizes) + 1), sizes, color="#00838f", width=1.0 if len(sizes) > 60 else 0.8, **EDGES)
    right.set_title(f"{len(sizes)} topic clusters (similarity >= {diversity.topic_similarity} to a centre)")
    right.set_xlabel("cluster, largest first")
    right.set_ylabel("instructions in cluster")
    _counts_axis(right.xaxis)
    _counts_axis(right.yaxis)


def _chart_dedup_similarity(fig, stats: StoreStats, _d: Diversity) -> None:
    ax = fig.subplots()
    ax.set_title("Near-duplicates dedup rejected: similarity to the kept record")
    ax.set_xlabel("cosine similarity to the nearest kept instruction")
    ax.set_ylabel("rejected instructions")
    if not stats.dedup_similarity:
        ax.text(0.5, 0.5, f"no near-duplicates rejected ({stats.outcomes[DEDUP_EXACT]} exact duplicates)",
                ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        return
    values, weights = zip(*sorted(stats.dedup_similarity.items()))
    ax.hist(values, bins=np.arange(min(values) - 0.005, 1.01, 0.01), weights=weights, color="#f9a825", **EDGES)
    _counts_axis(ax.yaxis)
