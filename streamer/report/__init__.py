"""`synthstream report`: figures, PNG charts and an HTML summary of the stored dataset.

Three steps, each a plain function:
- `collect_stats` streams once over each stored topic (samples, rejected, dlq, seeds.attributed)
  and keeps only counters and a seeded reservoir sample of instructions, so memory stays flat
  whatever the size of the store;
- `measure_diversity` embeds that sample with the real encoder: mean pairwise cosine distance
  and the number of topic clusters it covers;
- `render_charts`, `render_html` and `summary` turn the figures into PNGs, `index.html` and
  `summary.json` (the same figures, for scripts and tests).
"""

from __future__ import annotations

import html
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.storage.export import iter_stored

# Instruction outcomes as the store records them; the order is the order of the charts.
KEPT, JUDGE_REJECTED, DEDUP_EXACT, DEDUP_NEAR = "kept", "rejected by judge", "exact duplicate", "near duplicate"
SCORE_OUTCOMES = (KEPT, JUDGE_REJECTED, "rejected by dedup")
SCORE_RANGE = range(8)  # the 7-criterion rubric: 0..7
CHARTS = ("outcomes.png", "judge_scores.png", "instruction_length.png", "diversity.png", "dedup_similarity.png")
SIMULATED_NOTE = "simulated data (LLM simulator): texts, scores and rates are not meaningful"


class ReportError(Exception):
    """A report cannot be made (e.g. nothing stored); the message says what to check."""


@dataclass(frozen=True)
class ReportOptions:
    store_dir: Path
    prefix: str
    out: Path
    method: str | None = None
    sample_size: int = 1000
    seed: int = 0
    # Same-topic threshold for clustering; all-MiniLM-L6-v2 puts paraphrases around 0.8 and
    # texts on one subject around 0.5-0.7, unrelated ones near 0.
    topic_similarity: float = 0.5
    encoder_model: str = "all-MiniLM-L6-v2"


@dataclass
class StoredCount:
    rows: int = 0  # rows in the files, redelivered copies included
    unique: int = 0  # distinct record ids


@dataclass
class StoreStats:
    stored: dict[str, StoredCount] = field(default_factory=dict)  # by unprefixed topic
    samples: int = 0
    simulated: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    stage_versions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (stage, version, model)
    outcomes: Counter[str] = field(default_factory=Counter)  # instruction outcome -> records
    judge_scores: dict[str, Counter[int]] = field(default_factory=lambda: {o: Counter() for o in SCORE_OUTCOMES})
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stage, reason kind)
    dlq: Counter[str] = field(default_factory=Counter)  # by stage
    dedup_similarity: Counter[float] = field(default_factory=Counter)  # near duplicates, rounded to 0.01
    words: dict[str, Counter[int]] = field(default_factory=dict)  # method -> instruction length -> samples
    sampled: list[str] = field(default_factory=list)  # seeded reservoir of instructions

    @property
    def judged(self) -> int:
        return sum(sum(c.values()) for c in self.judge_scores.values())

    def rates(self) -> dict[str, Any]:
        """Rejection rates over what storage shows: records still in flight or dead-lettered after
        the judge are not in either side of a ratio."""
        judge_rejected = self.outcomes[JUDGE_REJECTED]
        duplicates = self.outcomes[DEDUP_EXACT] + self.outcomes[DEDUP_NEAR]
        checked = duplicates + self.outcomes[KEPT]
        return {
            "judged": self.judged,
            "judge_rejected": judge_rejected,
            "judge_rejection_rate": _ratio(judge_rejected, self.judged),
            "dedup_checked": checked,
            "dedup_duplicates": duplicates,
            "dedup_kept": self.outcomes[KEPT],
            "dedup_duplicate_rate": _ratio(duplicates, checked),
        }


@dataclass
class Diversity:
    model: str
    sample_size: int
    seed: int
    topic_similarity: float
    mean_distance: float | None  # mean pairwise cosine distance (1 - cosine similarity)
    clusters: list[tuple[int, str]]  # (size, most central instruction), largest first
    pair_similarities: np.ndarray  # for the chart only

    @property
    def singletons(self) -> int:
        return sum(1 for size, _ in self.clusters if size == 1)


# Collecting ------------------------------------------------------------------------------------
def unique_envelopes(store_dir: Path, topic: str, count: StoredCount) -> Iterator[dict[str, Any]]:
    """Envelopes of one stored topic, one per id (a redelivered batch is stored twice), streamed."""
    seen: set[str] = set()
    for row in iter_stored(store_dir, topic):
        count.rows += 1
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        count.unique += 1
        try:
            yield orjson.loads(row["envelope"])
        except orjson.JSONDecodeError:
            continue  # the sink keeps unparsable values too; there is nothing to report of them


def collect_stats(options: ReportOptions) -> StoreStats:
    check_store(options)
    stats = StoreStats()
    rng = random.Random(options.seed)
    for env in _envelopes(options, stats, "samples"):
        _add_sample(stats, env, rng, options.sample_size)
    if not stats.samples and options.method:
        raise ReportError(f"no samples of method {options.method!r} in {options.store_dir} "
                          f"(methods stored: {', '.join(sorted(_stored_methods(options))) or 'none'})")
    if not stats.samples:
        raise ReportError(f"nothing to report: no readable samples in {options.store_dir}")
    for env in _envelopes(options, stats, "rejected"):
        _add_rejection(stats, env)
    for env in _envelopes(options, stats, "dlq"):
        stats.dlq[str(env.get("data", {}).get("stage"))] += 1
    for _ in _envelopes(options, stats, "seeds.attributed"):
        pass  # read only to be counted in stats.stored
    return stats


def check_store(options: ReportOptions) -> None:
    samples_dir = options.store_dir / f"{options.prefix}samples"
    if any(samples_dir.glob("*.parquet")):
        return
    others = sorted(p.name.removesuffix("samples") for p in options.store_dir.glob("*samples") if p.is_dir())
    hint = f"; samples are stored under topic prefix {', '.join(map(repr, others))}: set kafka.topic_prefix" \
        if others else "; point --data-dir (or storage.data_dir) at a pipeline's data, e.g. synthstream-data/demo"
    raise ReportError(f"nothing to report: no stored samples in {samples_dir}{hint}")


def _envelopes(options: ReportOptions, stats: StoreStats, topic: str) -> Iterator[dict[str, Any]]:
    count = stats.stored.setdefault(topic, StoredCount())
    for env in unique_envelopes(options.store_dir, f"{options.prefix}{topic}", count):
        if options.method is None or env.get("method") == options.method or topic == "seeds.attributed":
            yield env


def _stored_methods(options: ReportOptions) -> set[str]:
    count = StoredCount()
    return {str(env.get("method")) for env in
            unique_envelopes(options.store_dir, f"{options.prefix}samples", count)}


def _add_sample(stats: StoreStats, env: dict[str, Any], rng: random.Random, sample_size: int) -> None:
    data, lineage = env.get("data") or {}, env.get("lineage") or {}
    method = str(env.get("method"))
    instruction = str(data.get("instruction", ""))
    stats.samples += 1
    stats.simulated += bool(env.get("simulated"))
    stats.by_method[method] += 1
    stats.outcomes[KEPT] += 1
    for stamp in lineage.get("stages") or []:
        stats.stage_versions[(stamp.get("stage"), stamp.get("version"), stamp.get("model") or "")] += 1
    score = _judge_score(env)
    if score is not None:
        stats.judge_scores[KEPT][score] += 1
    stats.words.setdefault(method, Counter())[len(instruction.split())] += 1
    # Reservoir sampling: every sample equally likely to be drawn, one pass, bounded memory.
    if len(stats.sampled) < sample_size:
        stats.sampled.append(instruction)
    else:
        slot = rng.randrange(stats.samples)
        if slot < sample_size:
            stats.sampled[slot] = instruction


def _add_rejection(stats: StoreStats, env: dict[str, Any]) -> None:
    data = env.get("data") or {}
    stage, reason = str(data.get("stage")), str(data.get("reason", ""))
    kind = _rejection_kind(stage, reason)
    stats.rejected[(stage, kind)] += 1
    score = _judge_score(env)
    if stage == "judge":
        stats.outcomes[JUDGE_REJECTED] += 1
    elif stage == "dedup":
        stats.outcomes[kind] += 1
        if kind == DEDUP_NEAR and data.get("score") is not None:
            stats.dedup_similarity[round(float(data["score"]), 2)] += 1
    if score is not None and stage in ("judge", "dedup"):
        stats.judge_scores[JUDGE_REJECTED if stage == "judge" else "rejected by dedup"][score] += 1


def _rejection_kind(stage: str, reason: str) -> str:
    if stage == "dedup":
        return DEDUP_EXACT if reason.startswith("exact") else DEDUP_NEAR
    if stage == "judge":
        return "below judge threshold"
    if stage == "attribution":
        return "seed below min_seed_score"
    return reason.split(":")[0][:60] or "unspecified"


def _judge_score(env: dict[str, Any]) -> int | None:
    """The rubric total: samples carry it in meta, every record after the judge in lineage details."""
    score = (env.get("lineage") or {}).get("details", {}).get("judge_score")
    if score is None:
        score = ((env.get("data") or {}).get("meta") or {}).get("judge_score")
    return int(score) if isinstance(score, (int, float)) else None


# Diversity -------------------------------------------------------------------------------------
def measure_diversity(texts: list[str], options: ReportOptions) -> Diversity:
    from streamer.runtime.embedding import shared_encoder

    vectors = shared_encoder(options.encoder_model).encode_sync(texts) if texts else np.zeros((0, 1), np.float32)
    pairs = pair_similarities(vectors)
    return Diversity(
        model=options.encoder_model, sample_size=len(texts), seed=options.seed,
        topic_similarity=options.topic_similarity,
        mean_distance=float(1.0 - pairs.mean()) if pairs.size else None,
        clusters=_describe_clusters(topic_clusters(vectors, options.topic_similarity), vectors, texts),
        pair_similarities=pairs,
    )


def pair_similarities(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every unordered pair of (unit) vectors."""
    upper = np.triu_indices(len(vectors), k=1)
    return (vectors @ vectors.T)[upper].astype(np.float64)


def topic_clusters(vectors: np.ndarray, similarity: float) -> list[list[int]]:
    """Greedy threshold clustering: each vector joins the cluster with the nearest centre if it is at
    least `similarity`-similar to it, else starts a new one. Unlike k-means it needs no k, so the
    count itself says how many topics the sample covers at that granularity."""
    members: list[list[int]] = []
    sums = np.zeros((0, vectors.shape[1]), np.float64)
    for i, vector in enumerate(vectors):
        if members:
            centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
            sims = centres @ vector
            best = int(np.argmax(sims))
            if sims[best] >= similarity:
                members[best].append(i)
                sums[best] += vector
                continue
        members.append([i])
        sums = np.vstack([sums, vector[None, :]])
    return sorted(members, key=len, reverse=True)


def _describe_clusters(clusters: list[list[int]], vectors: np.ndarray, texts: list[str]) -> list[tuple[int, str]]:
    described = []
    for rows in clusters:
        centre = vectors[rows].mean(axis=0)
        central = rows[int(np.argmax(vectors[rows] @ centre))]
        described.append((len(rows), texts[central]))
    return described


# Summary (summary.json) --------------------------------------------------------------------------
def summary(stats: StoreStats, diversity: Diversity, options: ReportOptions) -> dict[str, Any]:
    return {
        "store": str(options.store_dir),
        "topic_prefix": options.prefix,
        "method": options.method,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "samples": stats.samples,
        "simulated_samples": stats.simulated,
        "samples_by_method": dict(stats.by_method.most_common()),
        "stored": {topic: vars(count) for topic, count in stats.stored.items()},
        "stage_versions": [{"stage": s, "version": v, "model": m or None, "samples": n}
                           for (s, v, m), n in sorted(stats.stage_versions.items(), key=_stage_order)],
        "instruction_outcomes": {o: stats.outcomes[o] for o in (KEPT, JUDGE_REJECTED, DEDUP_EXACT, DEDUP_NEAR)},
        "rejected_by_stage": _nested(stats.rejected),
        "dlq_by_stage": dict(stats.dlq),
        "rates": stats.rates(),
        "judge_scores": {o: {str(s): c[s] for s in SCORE_RANGE} for o, c in stats.judge_scores.items()},
        "instruction_words": length_summary(_all_lengths(stats)),
        "instruction_words_by_method": {m: length_summary(c) for m, c in stats.words.items()},
        "diversity": {
            "model": diversity.model, "sample_size": diversity.sample_size, "seed": diversity.seed,
            "mean_pairwise_cosine_distance": _rounded(diversity.mean_distance),
            "topic_similarity": diversity.topic_similarity,
            "topic_clusters": len(diversity.clusters), "singleton_clusters": diversity.singletons,
            "largest_clusters": [{"size": size, "example": text} for size, text in diversity.clusters[:10]],
        },
        "charts": list(CHARTS),
    }


def length_summary(lengths: Counter[int]) -> dict[str, float | int | None]:
    total = sum(lengths.values())
    if not total:
        return {"count": 0, "min": None, "median": None, "mean": None, "p90": None, "max": None}
    return {"count": total, "min": min(lengths), "median": _quantile(lengths, 0.5),
            "mean": round(sum(k * n for k, n in lengths.items()) / total, 1),
            "p90": _quantile(lengths, 0.9), "max": max(lengths)}


def _quantile(counts: Counter[int], q: float) -> int:
    """The smallest value with at least q of the mass at or below it (from counts, not a list)."""
    target, running = q * sum(counts.values()), 0
    for value in sorted(counts):
        running += counts[value]
        if running >= target:
            return value
    return max(counts)


def _all_lengths(stats: StoreStats) -> Counter[int]:
    return sum(stats.words.values(), Counter())


def _nested(pairs: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (outer, inner), n in sorted(pairs.items()):
        out.setdefault(outer, {})[inner] = n
    return out


def _stage_order(item: tuple[tuple[str, str, str], int]) -> tuple[int, str]:
    from consumers import PIPELINE

    order = {stage.name: i for i, stage in enumerate(PIPELINE)}
    (stage, version, _), _n = item
    return order.get(stage, len(order)), version


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# Charts ----------------------------------------------------------------------------------------
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
        ax.bar(list(SCORE_RANGE), heights, bottom=bottom, color=color, label=f"{outcome} ({int(heights.sum())})")
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
        _, _, bars = ax.hist(values, bins=bins, weights=weights, alpha=0.6, label=f"{method} ({sum(weights)})")
        ax.axvline(_quantile(lengths, 0.5), linestyle="--", color=bars[0].get_facecolor(), alpha=1, linewidth=1.5)
    ax.set_xlabel("instruction length (words)")
    ax.set_ylabel("samples")
    _counts_axis(ax.yaxis)
    ax.set_title("Instruction length (dashed: median)")
    ax.legend()


def _chart_diversity(fig, _s: StoreStats, diversity: Diversity) -> None:
    left, right = fig.subplots(1, 2)
    if diversity.pair_similarities.size:
        left.hist(diversity.pair_similarities, bins=40, color="#1565c0")
        mean_sim = 1.0 - (diversity.mean_distance or 0.0)
        left.axvline(mean_sim, color="black", linestyle="--", linewidth=1,
                     label=f"mean similarity {mean_sim:.3f}\n= mean distance {diversity.mean_distance:.3f}")
        left.legend()
    left.set_title(f"Pairwise cosine similarity ({diversity.sample_size} sampled instructions)")
    left.set_xlabel("cosine similarity (left = more diverse)")
    left.set_ylabel("pairs")
    sizes = [size for size, _ in diversity.clusters]
    right.bar(range(1, len(sizes) + 1), sizes, color="#00838f", width=1.0 if len(sizes) > 60 else 0.8)
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
    ax.hist(values, bins=np.arange(min(values) - 0.005, 1.01, 0.01), weights=weights, color="#f9a825")
    _counts_axis(ax.yaxis)


# HTML ----------------------------------------------------------------------------------------
def render_html(figures: dict[str, Any]) -> str:
    e = html.escape
    rates, div, words = figures["rates"], figures["diversity"], figures["instruction_words"]
    banner = ""
    if figures["simulated_samples"]:
        banner = (f'<p class="sim">{figures["simulated_samples"]} of {figures["samples"]} samples were made with '
                  f"the LLM simulator: their texts, judge scores and rejection rates are not meaningful. Only the "
                  f"counts and the pipeline mechanics are.</p>")
    sections = [
        f"<h1>synthstream report</h1>{banner}",
        (f"<p>Store <code>{e(figures['store'])}</code>, topic prefix <code>{e(figures['topic_prefix'])}</code>"
         f"{', method ' + e(figures['method']) if figures['method'] else ''}; generated "
         f"{e(figures['generated_at'])}. Counts are distinct record ids (redelivered copies stored twice count "
         f"once).</p>"),
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
        _diversity_section(div),
        _charts_section(),
    ]
    return _page("\n".join(sections))


def _diversity_section(div: dict[str, Any]) -> str:
    explanation = (
        f"<p>A seeded sample of {div['sample_size']} instructions (seed {div['seed']}) embedded with "
        f"{html.escape(div['model'])}. <b>Mean pairwise cosine distance</b> is 1 minus the average similarity of "
        f"every pair: 0 means all say the same thing, around 0.8-1 means they share little. "
        f"<b>Topic clusters</b>: each instruction joins the nearest existing group if it is at least "
        f"{div['topic_similarity']} cosine-similar to that group's centre (roughly: the same subject), else it "
        f"starts a new group. The count is how many subjects the sample covers at that granularity; "
        f"{div['singleton_clusters']} of the {div['topic_clusters']} groups hold a single instruction. It grows "
        f"with the sample size, so compare reports made with the same sample size.</p>")
    largest = _table("Largest topic clusters", ["instructions", "most central instruction"],
                     [(c["size"], c["example"][:200]) for c in div["largest_clusters"]])
    return f"<h2>Diversity</h2>{explanation}{largest}"


CHART_CAPTIONS = {
    "outcomes.png": "Where every stored instruction ended (kept as a sample, rejected by the judge, dropped by "
                    "dedup, or dead-lettered) and samples per generation method.",
    "judge_scores.png": "Rubric totals of every instruction the judge scored, stacked by what happened next.",
    "instruction_length.png": "Length of the sampled instructions in words, per method; dashed lines: medians.",
    "diversity.png": "Left: cosine similarity of every pair in the diversity sample. Right: size of each topic "
                     "cluster (see Diversity).",
    "dedup_similarity.png": "For near-duplicates dedup dropped: how similar each was to the instruction it kept.",
}


def _charts_section() -> str:
    figures = "".join(f'<figure><img src="{name}" alt="{name}"><figcaption>{html.escape(CHART_CAPTIONS[name])}'
                      f"</figcaption></figure>" for name in CHARTS)
    return f"<h2>Charts</h2>{figures}"


def _table(title: str, header: list[str], rows: Any, note: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    body = body or f'<tr><td colspan="{len(header)}">none</td></tr>'
    note_html = f"<p class=note>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>{note_html}"


def _pct(rate: float | None, part: int, whole: int) -> str:
    return "n/a (nothing judged)" if rate is None else f"{rate:.1%} ({part} of {whole})"


def _page(body: str) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;vertical-align:top}th{background:#f0f0f0}.sim{background:#fdecea;color:#b00020;"
             "padding:.6em 1em;border:1px solid #b00020;font-weight:bold}.note{color:#666;font-size:90%}"
             "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>synthstream report</title>'
            f"<style>{style}</style></head><body>{body}</body></html>\n")


# The whole report ---------------------------------------------------------------------------------
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
