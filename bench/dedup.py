"""Dedup: does embed+check keep up with the bare encoder, and is one check fast at 1M vectors?

Three figures, measured in one run:

(a) throughput ratio = embed+check records/s ÷ bare encoder sentences/s      target ≥ 0.9
    On the same N generated instruction-like texts (templates × topics × numbers, mostly
    distinct, with near-duplicates and a few exact duplicates mixed in):
      bare encoder  `Encoder.encode_sync` over the texts split across the encoder's worker threads (as many
                    as its scheduler uses), at the faster of batch sizes 32 and 64, on the shared encoder, after a
                    warm-up outside the timing; run once before and once after the pipeline
                    measurement, and the mean of the two rates is used (cancels drift).
      embed+check   the project's own path: every record asks the shared encoder for its own
                    vector at once (many records in flight, as the runtime has them; the encoder
                    gathers them into calls of up to EmbedOptions().gather texts), each result turned
                    into an EmbeddedInstruction as the embed stage does, then queued in input
                    order for `DedupIndex(DedupOptions()).decide(...)`; records/s from the first
                    submit to the last decision.
(c) the encoder itself, ONNX Runtime vs the torch path (sentence-transformers), in one run: texts/s
    and CPU ms per text on one thread, batch 32, the same texts, after a warm-up; and the two
    paths' vectors compared (cosine). The torch side runs only where the `[torch]` extra is
    installed (else one line says it was skipped). Goal: ONNX <= 0.5x the torch path's CPU per text.
(b) check latency at 1M indexed vectors: p99 < 2 ms, index built in a few minutes
    Random unit vectors (dim 384, float32, seeded), indexed with `build_ivf(vectors, ivf_lists,
    ivf_probe)` as DedupIndex does beyond exact_limit (DedupOptions defaults); build time
    (train + add) printed. Then Q single-record checks, half random vectors and half stored
    vectors plus small noise (near-duplicates), each = one `index.search(q, 1)` plus the threshold
    comparison, timed one by one; p50 / p99 / max and the near-duplicates' recall printed.

    python bench/dedup.py [--texts 2000] [--vectors 1000000] [--queries 2000]
                          [--skip-throughput] [--skip-latency] [--skip-encoders]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from consumers.dedup import DedupIndex, DedupOptions, build_ivf  # noqa: E402
from consumers.embed import EmbedOptions  # noqa: E402
from consumers.payloads import EmbeddedInstruction, ScoredInstruction  # noqa: E402
from consumers.rubric import CRITERIA, Judgement  # noqa: E402
from streamer.runtime.embedding import pack_vector, shared_encoder  # noqa: E402

RATIO_TARGET = 0.9
P99_TARGET_MS = 2.0
DIM = 384

# Texts ----------------------------------------------------------------------------------------

OPENERS = [
    "Explain how {topic} works to a {audience}, using {n} concrete examples.",
    "Write a {n}-step plan for introducing {topic} at a {org} with limited budget.",
    "Compare {topic} with {other} for a {org}: list {n} trade-offs and recommend one.",
    "I am a {audience} preparing a talk on {topic}. Draft an outline with {n} sections.",
    "Design a {n}-week study schedule for a {audience} who wants to master {topic}.",
    "Summarise the main risks of {topic} for a {org} in at most {n} bullet points.",
    "Our {org} is migrating to {topic}. What {n} questions should we ask vendors first?",
    "Write a Python function that applies {topic} to a list of {n} records and explain it.",
    "Give {n} common misconceptions about {topic} and correct each one for a {audience}.",
    "Create a {n}-question quiz on {topic} for a {audience}, with answers and explanations.",
    "How would you measure whether {topic} improved results at a {org} after {n} months?",
    "Draft an email to a {audience} explaining why our {org} is delaying {topic} by {n} weeks.",
]
TOPICS = [
    "gradient boosting", "Kafka consumer groups", "vector databases", "zero-trust networking",
    "double-entry bookkeeping", "crop rotation", "container orchestration", "carbon accounting",
    "differential privacy", "lean manufacturing", "CRISPR gene editing", "microservice tracing",
    "index funds", "solar microgrids", "contract law basics", "sourdough fermentation",
    "Bayesian A/B testing", "supply chain forecasting", "OAuth 2.0 flows", "urban heat islands",
    "protein folding", "event sourcing", "music theory modes", "watershed management",
    "mixed-effects models", "incident postmortems", "ray tracing", "inventory costing methods",
    "graph neural networks", "vaccine cold chains", "rate limiting", "heat pump retrofits",
    "payroll compliance", "coral reef monitoring", "compiler optimisations", "early childhood literacy",
    "wildfire evacuation planning", "quantum key distribution", "hospital triage", "tidal energy",
    "database sharding", "beekeeping", "sign language interpretation", "freight rail scheduling",
    "mortgage refinancing", "soil salinity", "open-source licensing", "flood insurance pricing",
]
ASPECTS = ["{t}", "{t}", "the history of {t}", "the costs of {t}", "common failure modes of {t}",
           "the maths behind {t}", "security concerns in {t}", "recent changes in {t}", "tooling for {t}",
           "regulation affecting {t}", "beginner mistakes with {t}", "measuring the impact of {t}"]
OTHERS = ["the current manual process", "a spreadsheet-based approach", "an off-the-shelf SaaS tool",
          "a rule-based system", "outsourcing it", "doing nothing for a year"]
AUDIENCES = ["high-school student", "new hire", "non-technical manager", "graduate student",
             "retired engineer", "small-business owner", "nurse", "city council member"]
ORGS = ["hospital", "startup", "public library", "logistics company", "family farm", "university lab",
        "regional bank", "non-profit"]
EXTRAS = [
    "Keep the tone friendly but precise.",
    "Assume they have {n} hours a week available.",
    "Mention at least one source they can read afterwards.",
    "Avoid jargon unless you define it first.",
    "The answer should fit on one page.",
    "Point out where the usual advice fails in practice.",
    "Include a short worked example with made-up numbers for {n} customers.",
    "End with a checklist they can print.",
    "Our team is {n} people and nobody has done this before.",
    "We already tried a pilot last year and it did not go well because of poor data quality.",
    "Format the result as a table with columns for cost, effort and expected benefit.",
]
TWEAKS = [
    lambda s: "Please " + s[0].lower() + s[1:],
    lambda s: s.rstrip(".?") + ", please.",
    lambda s: s + " Thanks!",
    lambda s: s.replace(" a ", " one ", 1),
    lambda s: s.replace("Write", "Compose", 1).replace("Explain", "Describe", 1),
    lambda s: "Quick question: " + s,
]


def make_texts(n: int, seed: int = 7, near_share: float = 0.06, exact_share: float = 0.01) -> list[str]:
    """Deterministic, varied instruction-like texts; ~6% near-duplicates, ~1% exact (up to spacing/case)."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if texts and roll < exact_share:
            base = rng.choice(texts)
            texts.append("  " + base.upper() if rng.random() < 0.5 else base.replace(" ", "  ", 2))
            continue
        if texts and roll < exact_share + near_share:
            texts.append(rng.choice(TWEAKS)(rng.choice(texts)))
            continue
        num = rng.randint(2, 12)
        topic = rng.choice(ASPECTS).format(t=rng.choice(TOPICS))
        parts = [rng.choice(OPENERS).format(topic=topic, other=rng.choice(OTHERS), audience=rng.choice(AUDIENCES),
                                            org=rng.choice(ORGS), n=num)]
        for extra in rng.sample(EXTRAS, rng.choice([0, 0, 1, 1, 2, 3])):
            parts.append(extra.format(n=rng.randint(2, 40)))
        texts.append(" ".join(parts))
    return texts


def scored(text: str, i: int) -> ScoredInstruction:
    judgement = Judgement(analysis="specific and practical; needs some domain knowledge",
                          scores={name: (i + k) % 2 for k, name in enumerate(CRITERIA)}, total=3 + i % 2)
    return ScoredInstruction(instruction=text, judgement=judgement)


# (a) Throughput ---------------------------------------------------------------------------------

BARE_BATCH_SIZES = (32, 64)


def bare_rate(texts: list[str]) -> float:
    """The bare encoder at its best: the texts split evenly over as many threads as the encoder
    has workers, each share in one call (it sorts them by length itself), at the faster of two
    batch sizes."""
    from concurrent.futures import ThreadPoolExecutor

    encoder = shared_encoder(EmbedOptions().model)  # the very instance the embed stage uses
    shares = [texts[i::encoder.workers] for i in range(encoder.workers)]
    rates = []
    with ThreadPoolExecutor(max_workers=encoder.workers) as pool:
        for batch_size in BARE_BATCH_SIZES:
            start = time.perf_counter()
            encoded = list(pool.map(lambda share: encoder.encode_sync(share, batch_size=batch_size), shares))
            elapsed = time.perf_counter() - start
            assert sum(v.shape[0] for v in encoded) == len(texts)
            rates.append(len(texts) / elapsed)
    return max(rates)


async def pipeline(items: list[ScoredInstruction]) -> tuple[float, dict[str, int]]:
    embed_options = EmbedOptions()
    encoder = shared_encoder(embed_options.model)
    index = DedupIndex(DedupOptions())
    start = time.perf_counter()
    # Every record in flight at once, each asking the shared encoder for its own vector (as the
    # embed stage does); the encoder gathers them into calls of up to `gather` texts.
    embedded = [asyncio.ensure_future(encoder.encode([item.instruction])) for item in items]
    decisions: list[asyncio.Future] = []
    for i, (item, future) in enumerate(zip(items, embedded, strict=True)):  # decisions in input order
        [vector] = await future
        record = EmbeddedInstruction(**item.model_dump(), embedding=pack_vector(vector),
                                     embedding_model=embed_options.model)
        decisions.append(index.decide(f"in-{i}", f"out-{i}", record))
    results = await asyncio.gather(*decisions)
    elapsed = time.perf_counter() - start
    counts = {"kept": sum(d.kept for d in results),
              "exact": sum((not d.kept) and d.exact for d in results),
              "near": sum((not d.kept) and not d.exact for d in results)}
    return len(items) / elapsed, counts


def throughput(args: argparse.Namespace) -> float:
    texts = make_texts(args.texts)
    items = [scored(t, i) for i, t in enumerate(texts)]
    encoder = shared_encoder(EmbedOptions().model)
    t0 = time.perf_counter()
    encoder.encode_sync(texts[:64], batch_size=64)  # load + warm up, outside the timing
    encoder.encode_sync(texts[64:128], batch_size=64)
    print(f"(a) throughput: {len(texts)} texts ({len(set(texts))} distinct strings, "
          f"mean {sum(map(len, texts)) / len(texts):.0f} chars); model {encoder.name}, "
          f"loaded + warmed up in {time.perf_counter() - t0:.1f}s ({type(encoder._load()).__name__}), "
          f"faiss threads {faiss.omp_get_max_threads()}")
    before = bare_rate(texts)
    rate, counts = asyncio.run(pipeline(items))
    after = bare_rate(texts)
    bare = (before + after) / 2
    ratio = rate / bare
    print(f"  bare encoder   encode_sync(all texts over {shared_encoder(EmbedOptions().model).workers} threads, "
          f"best of batch sizes {BARE_BATCH_SIZES}): "
          f"{before:.1f} sentences/s before, {after:.1f} after, "
          f"mean {bare:.1f} (mean of the runs either side of the pipeline, to cancel drift)")
    print(f"  embed+check    Encoder.encode per record -> EmbeddedInstruction -> DedupIndex.decide: {rate:.1f} records/s "
          f"(kept {counts['kept']}, near-duplicates {counts['near']}, exact duplicates {counts['exact']})")
    print(f"  ratio = {ratio:.3f}   (target >= {RATIO_TARGET})")
    return ratio


# (c) ONNX vs torch ------------------------------------------------------------------------------

def encoder_cost(encode, texts: list[str]) -> tuple[float, float]:
    """(texts/s, CPU ms per text) of `encode(texts)` on this thread, after a warm-up."""
    encode(texts[:64])
    cpu, start = time.thread_time(), time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start), (time.thread_time() - cpu) * 1000 / len(texts)


def encoders(args: argparse.Namespace) -> None:
    texts = make_texts(args.texts)[:1000]
    encoder = shared_encoder(EmbedOptions().model)
    onnx_vectors = encoder.encode_sync(texts[:200], batch_size=32)
    rate, cpu = encoder_cost(lambda t: encoder.encode_sync(t, batch_size=32), texts)
    print(f"(c) encoder alone, {len(texts)} texts, one thread, batch 32:")
    print(f"  ONNX Runtime           {rate:7.1f} texts/s   {cpu:5.2f} ms CPU per text")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("  torch path             skipped: sentence-transformers is not installed "
              "(pip install -e '.[torch]' to measure it beside ONNX)")
        return
    torch.set_num_threads(1)
    model = SentenceTransformer(encoder.location, device="cpu")
    def st_encode(t: list[str]) -> np.ndarray:
        return model.encode(t, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
    torch_rate, torch_cpu = encoder_cost(st_encode, texts)
    cosines = np.sum(onnx_vectors * st_encode(texts[:200]), axis=1)
    print(f"  torch (sentence-tr.)   {torch_rate:7.1f} texts/s   {torch_cpu:5.2f} ms CPU per text  "
          f"(torch {torch.__version__})")
    print(f"  ONNX / torch CPU per text = {cpu / torch_cpu:.2f}   (goal <= 0.5); vectors: cosine mean "
          f"{cosines.mean():.6f}, min {cosines.min():.6f}")


# (b) Latency ------------------------------------------------------------------------------------

def unit_vectors(rng: np.random.Generator, n: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - lo), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:lo + len(block)] = block
    return out


def latency(args: argparse.Namespace) -> float:
    options = DedupOptions()
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(1234)
    t0 = time.perf_counter()
    vectors = unit_vectors(rng, args.vectors)
    print(f"(b) check latency: {args.vectors:,} random unit vectors, dim {DIM} "
          f"({vectors.nbytes / 2**30:.2f} GiB, generated in {time.perf_counter() - t0:.1f}s)")

    faiss.omp_set_num_threads(cores)
    t0 = time.perf_counter()
    index = build_ivf(vectors, options.ivf_lists, options.ivf_probe)
    build = time.perf_counter() - t0
    print(f"  build_ivf(lists={options.ivf_lists}, probe={options.ivf_probe}), train + add: {build:.1f}s "
          f"with {cores} faiss threads")

    half = args.queries // 2
    sources = rng.choice(args.vectors, size=args.queries - half, replace=False)
    noise = rng.standard_normal((len(sources), DIM), dtype=np.float32) * np.float32(args.noise / np.sqrt(DIM))
    near = vectors[sources] + noise
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    near_cos = np.einsum("ij,ij->i", near, vectors[sources])
    del vectors
    gc.collect()
    queries = np.concatenate([unit_vectors(rng, half), near]).astype(np.float32)
    order = rng.permutation(len(queries))  # interleave the two kinds

    # Single-record checks: one query at a time, so one thread (a parallel region per single
    # query only adds wake-up jitter; IVF search parallelises over queries, not lists).
    faiss.omp_set_num_threads(args.query_threads)
    threshold = options.threshold
    for q in queries[:50]:  # warm up caches, outside the timing
        index.search(q.reshape(1, -1), 1)
    times = np.empty(len(queries))
    top = np.empty(len(queries), dtype=np.int64)
    dup = np.empty(len(queries), dtype=bool)
    for k in order:
        q = queries[k]
        start = time.perf_counter()
        sims, positions = index.search(q.reshape(1, -1), 1)
        is_dup = positions[0, 0] >= 0 and float(sims[0, 0]) >= threshold
        times[k] = time.perf_counter() - start
        top[k], dup[k] = positions[0, 0], is_dup
    ms = times * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    recall = float(np.mean(top[half:] == sources))
    print(f"  {len(queries)} single-record checks (index.search(q, 1) + threshold {threshold}), "
          f"{args.query_threads} faiss thread(s), after 50 warm-up checks; "
          f"{half} random, {len(queries) - half} near-duplicates (noise {args.noise}, "
          f"cosine to source {near_cos.min():.3f}-{near_cos.max():.3f})")
    print(f"  latency ms: p50 {p50:.3f}  p99 {p99:.3f}  max {ms.max():.3f}  "
          f"(random p99 {np.percentile(ms[:half], 99):.3f}, near-duplicate p99 {np.percentile(ms[half:], 99):.3f})")
    print(f"  near-duplicate recall (top hit = source vector): {recall:.4f}; flagged as duplicates: "
          f"near {dup[half:].mean():.4f}, random {dup[:half].mean():.4f}")
    print(f"  p99 = {p99:.3f} ms   (target < {P99_TARGET_MS} ms)")
    return float(p99)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000, help="texts for the throughput ratio")
    ap.add_argument("--vectors", type=int, default=1_000_000, help="indexed vectors for the latency figure")
    ap.add_argument("--queries", type=int, default=2000, help="single-record checks timed")
    ap.add_argument("--noise", type=float, default=0.3, help="near-duplicate noise norm (cosine ~ 1/sqrt(1+noise^2))")
    ap.add_argument("--query-threads", type=int, default=1, help="faiss threads for the single-record checks")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-encoders", action="store_true", help="skip (c), ONNX vs torch")
    args = ap.parse_args()

    ratio = p99 = None
    if not args.skip_throughput:
        ratio = throughput(args)
    if not args.skip_encoders:
        encoders(args)
    if not args.skip_latency:
        p99 = latency(args)

    print("summary:")
    ok = True
    if ratio is not None:
        ok &= ratio >= RATIO_TARGET
        print(f"  throughput ratio embed+check / bare encoder = {ratio:.3f}   (target >= {RATIO_TARGET})")
    else:
        print("  throughput ratio: skipped")
    if p99 is not None:
        ok &= p99 < P99_TARGET_MS
        print(f"  check p99 at {args.vectors:,} vectors = {p99:.3f} ms   (target < {P99_TARGET_MS} ms)")
    else:
        print("  check latency: skipped")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
