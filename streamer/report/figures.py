"""The report's figures: reading the store once and computing every number the page, the charts
and summary.json show.

- `collect_stats` streams once over each stored topic (samples, rejected, dlq, seeds.attributed)
  and keeps only counters and a seeded reservoir sample of instructions, so memory stays flat
  whatever the size of the store;
- `measure_diversity` embeds that sample with the real encoder: mean pairwise cosine distance
  and the number of topic clusters it covers;
- `summary` gathers both into the plain dict written to summary.json and rendered by the page.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.storage import store

# Instruction outcomes as the store records them; the order is the order of the charts.
KEPT, JUDGE_REJECTED, DEDUP_EXACT, DEDUP_NEAR = "kept", "rejected by judge", "exact duplicate", "near duplicate"
SCORE_OUTCOMES = (KEPT, JUDGE_REJECTED, "rejected by dedup")
SCORE_RANGE = range(8)  # the 7-criterion rubric: 0..7
# The chart files, in page order (charts.render_charts draws them; summary.json lists them).
CHARTS = ("outcomes.png", "judge_scores.png", "instruction_length.png", "diversity.png", "dedup_similarity.png")


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
    # What the pipeline's LLM calls cost (streamer.ops.costs.run_costs), given by the caller: not in the store.
    costs: dict[str, Any] | None = None


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
    for row in store.rows(store_dir, topic):
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
        "llm_cost": options.costs,
    }


def length_summary(lengths: Counter[int]) -> dict[str, float | int | None]:
    total = sum(lengths.values())
    if not total:
        return {"count": 0, "min": None, "median": None, "mean": None, "p90": None, "max": None}
    return {"count": total, "min": min(lengths), "median": quantile(lengths, 0.5),
            "mean": round(sum(k * n for k, n in lengths.items()) / total, 1),
            "p90": quantile(lengths, 0.9), "max": max(lengths)}


def quantile(counts: Counter[int], q: float) -> int:
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
