"""embed + dedup with the real encoder and FAISS, a real broker and real worker processes."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from consumers import TOPICS
from consumers.dedup import DedupIndex, DedupOptions
from consumers.payloads import EmbeddedInstruction, Rejection, ScoredInstruction
from consumers.rubric import Judgement
from helpers import produce, read_topic, stop_process, wait_for
from streamer.runtime.embedding import pack_vector
from streamer.kafka.clients import ensure_topics
from streamer.records import Envelope, Lineage, new_root, stable_hash

ROUTER_SAME = [
    "How do I reset my home router to its factory settings?",
    "How can I reset my home router to factory settings?",
    "What's the way to reset my home router back to its factory settings?",
]
ROUTER_DIFFERENT = [
    "My router drops the Wi-Fi connection every evening; how do I find out why?",
    "Which router settings should I change to make my home network more secure?",
    "How do I set up a guest Wi-Fi network on my router with its own password?",
]
BREAD = ["Give me a recipe for a sourdough loaf that uses 500 g of flour.",
         "Give me a sourdough loaf recipe that uses 500 g of flour."]

JUDGEMENT = Judgement(analysis="fine", scores={}, total=5)


def scored(text: str, source: str = "") -> Envelope:
    """A scored instruction as a root record; `source` tells apart equal texts of different origin."""
    env = new_root(ScoredInstruction(instruction=text, judgement=JUDGEMENT))
    if source:
        env = env.model_copy(update={"id": stable_hash(env.id, source), "root_id": stable_hash(env.id, source)})
    return env


def run_dedup(pipeline, texts: list[str], repeats: tuple[str, ...] = ()) -> tuple[list[dict], list[dict], str]:
    produce(pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"], pipeline.prefix + "instructions.scored",
            [scored(t) for t in texts] + [scored(t, source="elsewhere") for t in repeats])
    run = pipeline.cli("run", "--stage", "embed", "--stage", "dedup", "--until-idle", "--no-progress", timeout=180)
    return (*unique_and_rejected(pipeline), run.stderr.decode())


def unique_and_rejected(pipeline) -> tuple[list[dict], list[dict]]:
    """Distinct records by id: after a crash, redelivery re-emits decisions under the same ids."""
    bootstrap = pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]

    def distinct(records: list[dict]) -> list[dict]:
        return list({r["id"]: r for r in records}.values())

    unique = distinct(read_topic(bootstrap, pipeline.prefix + "instructions.unique"))
    rejected = distinct([r for r in read_topic(bootstrap, pipeline.prefix + "rejected")
                         if r["data"]["stage"] == "dedup"])
    return unique, rejected


@pytest.fixture
def topics(pipeline):
    pipeline.env["SYNTHSTREAM_STAGES__DEDUP__THRESHOLD"] = "0.9"
    asyncio.run(ensure_topics(pipeline.settings(), TOPICS))
    return pipeline


@pytest.mark.slow
def test_paraphrases_collapse_and_different_instructions_on_one_topic_are_kept(topics):
    unique, rejected, _ = run_dedup(topics, ROUTER_SAME + ROUTER_DIFFERENT + BREAD, repeats=(ROUTER_DIFFERENT[0],))
    kept = {u["data"]["instruction"]: u for u in unique}
    # Which paraphrase survives depends on arrival order at dedup (embed runs in parallel);
    # exactly one of each group does, and every clearly different instruction does.
    assert len(set(kept) & set(ROUTER_SAME)) == 1 and len(set(kept) & set(BREAD)) == 1
    assert set(ROUTER_DIFFERENT) <= set(kept) and len(kept) == 5
    assert len(rejected) == 4  # two router paraphrases, one bread paraphrase, one exact repeat
    for r in rejected:
        text = r["data"]["record"]["instruction"]
        group = ROUTER_SAME if text in ROUTER_SAME else BREAD if text in BREAD else [text]
        [survivor] = [kept[t] for t in group if t in kept]
        assert r["lineage"]["details"]["duplicate_of"] == survivor["id"]
        assert survivor["id"] in r["data"]["reason"]
        assert r["lineage"]["details"]["similarity"] >= 0.9
    exact = [r for r in rejected if r["data"]["reason"].startswith("exact duplicate")]
    assert [r["data"]["record"]["instruction"] for r in exact] == [ROUTER_DIFFERENT[0]]
    # Kept records carry their embedding compactly (float16: 2 bytes per dimension).
    assert all(len(u["data"]["embedding"]) == 4 * (384 * 2 // 3) for u in unique)


@pytest.mark.slow
def test_sigkill_restart_keeps_rejecting_and_a_deleted_snapshot_rebuilds_the_same(topics):
    pipeline = topics
    pipeline.env["SYNTHSTREAM_STAGES__DEDUP__SNAPSHOT_EVERY"] = "2"
    bootstrap = pipeline.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    first = [ROUTER_SAME[0], BREAD[0], *ROUTER_DIFFERENT]
    produce(bootstrap, pipeline.prefix + "instructions.scored", [scored(t) for t in first])
    worker = pipeline.start("run", "--stage", "embed", "--stage", "dedup", "--no-progress", name="dedup")
    wait_for(lambda: len(unique_and_rejected(pipeline)[0]) == 5, 120, what="first records kept")
    state = pipeline.data_dir / "state" / f"{pipeline.prefix}dedup"
    wait_for(lambda: (state / "snapshot" / "meta.json").exists(), 30, what="a snapshot")
    stop_process(worker, signal.SIGKILL)

    unique, rejected, log = run_dedup(pipeline, [ROUTER_SAME[1], "How do I make rye bread without a starter?"])
    assert "snapshot with" in log, log[-2000:]  # restored from the snapshot, then the changelog tail
    kept_ids = {u["data"]["instruction"]: u["id"] for u in unique}
    assert len(unique) == 6 and set(first) <= set(kept_ids), "no kept record lost over the restart"
    assert [r["lineage"]["details"]["duplicate_of"] for r in rejected] == [kept_ids[ROUTER_SAME[0]]]
    decided_with_snapshot = [(r["data"]["record"]["instruction"], r["lineage"]["details"]["duplicate_of"])
                             for r in rejected]

    shutil.rmtree(state / "snapshot")
    more = [ROUTER_SAME[2], BREAD[1], "Explain how a router's NAT table works."]
    unique, rejected, log = run_dedup(pipeline, more)
    assert re.search(r"no usable snapshot: rebuilt \+ \d+ changelog records .* -> 6 entries", log), log[-2000:]
    decided = {r["data"]["record"]["instruction"]: r["lineage"]["details"]["duplicate_of"] for r in rejected}
    assert decided == {**dict(decided_with_snapshot), ROUTER_SAME[2]: kept_ids[ROUTER_SAME[0]],
                       BREAD[1]: kept_ids[BREAD[0]]}
    assert len(unique) == 7


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def embedded(text: str, vector: np.ndarray) -> EmbeddedInstruction:
    return EmbeddedInstruction(instruction=text, judgement=JUDGEMENT, embedding=pack_vector(vector),
                               embedding_model="test")


async def decide_all(index: DedupIndex, items: list[tuple[str, EmbeddedInstruction]]):
    futures = [index.decide(f"in-{name}", f"out-{name}", item) for name, item in items]
    return await asyncio.gather(*futures)


async def test_decisions_within_one_batch_follow_input_order_and_redelivery_is_idempotent():
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=384))
    near = unit(base + 0.05 * unit(rng.normal(size=384)))
    far = unit(rng.normal(size=384))
    index = DedupIndex(DedupOptions())
    first = await decide_all(index, [("a", embedded("alpha", base)), ("b", embedded("beta", near)),
                                     ("c", embedded("gamma", far)), ("d", embedded("alpha", far))])
    assert [d.kept for d in first] == [True, False, True, False]
    assert first[1].nearest_id == "out-a" and first[1].similarity >= 0.9
    assert first[3].exact and first[3].nearest_id == "out-a"
    again = await decide_all(index, [("a", embedded("alpha", base)), ("b", embedded("beta", near))])
    assert [d.kept for d in again] == [True, False] and index.size() == 2


async def test_a_redelivered_id_keeps_its_first_decision_even_with_other_content(tmp_path: Path):
    # Upstream stages may regenerate a record's content under the same id (e.g. a situation that
    # sees more seed examples after a restart); one input must never end both kept and rejected.
    rng = np.random.default_rng(2)
    base, other = unit(rng.normal(size=384)), unit(rng.normal(size=384))
    index = DedupIndex(DedupOptions())
    first = await decide_all(index, [("a", embedded("alpha", base)), ("b", embedded("alpha", other))])
    assert [d.kept for d in first] == [True, False]
    [redelivered] = await decide_all(index, [("b", embedded("a different text", other))])
    assert not redelivered.kept and redelivered == first[1]
    index.save(tmp_path)
    restored = DedupIndex(DedupOptions())
    restored.load(tmp_path)
    [after_restart] = await decide_all(restored, [("b", embedded("yet another text", other))])
    assert not after_restart.kept and after_restart == first[1] and restored.size() == 1

    # Without a snapshot the state is folded from dedup's outputs: kept records and rejections.
    rebuilt = DedupIndex(DedupOptions())
    kept = Envelope(id="out-a", kind="embedded_instruction", root_id="r", parent_id="in-a",
                    data=embedded("alpha", base).model_dump())
    rejection = Envelope(id="out-b", kind="rejection", root_id="r", parent_id="in-b",
                         lineage=Lineage(details={"duplicate_of": "out-a", "similarity": 1.0}),
                         data=Rejection(stage="dedup", reason="exact duplicate of out-a", score=1.0,
                                        record={}).model_dump())
    rebuilt.apply(kept, kept.payload(EmbeddedInstruction))
    rebuilt.apply(rejection, rejection.payload(Rejection))
    [after_rebuild] = await decide_all(rebuilt, [("b", embedded("yet another text", other))])
    assert after_rebuild == first[1] and rebuilt.size() == 1


async def test_index_moves_to_ivf_beyond_exact_limit_and_snapshot_round_trips(tmp_path: Path):
    import faiss

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(1100, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = DedupIndex(DedupOptions(exact_limit=1000, ivf_lists=16, ivf_probe=4))
    await decide_all(index, [(str(i), embedded(f"t{i}", v)) for i, v in enumerate(vectors)])
    assert index.size() == 1100 and isinstance(index.index, faiss.IndexIVF)
    probe = unit(vectors[7] + 0.02 * unit(rng.normal(size=384)))
    [decision] = await decide_all(index, [("probe", embedded("probe", probe))])
    assert not decision.kept and decision.nearest_id == "out-7"

    index.save(tmp_path)
    restored = DedupIndex(DedupOptions(exact_limit=1000, ivf_lists=16, ivf_probe=4))
    restored.load(tmp_path)
    [again] = await decide_all(restored, [("probe2", embedded("probe2", probe))])
    assert not again.kept and again.nearest_id == "out-7" and restored.size() == 1100


@pytest.mark.slow
def test_a_second_dedup_writer_is_refused(topics):
    pipeline = topics
    first = pipeline.start("run", "--stage", "dedup", "--no-progress", name="dedup-a")
    wait_for(lambda: "dedup: assigned partitions" in pipeline.log_of(first), 60, what="first writer joined")
    second = pipeline.cli("run", "--stage", "dedup", "--no-progress", check=False, timeout=60)
    # Refused before any Kafka client is made: exit 3 (busy), the writer's pid, no unclosed-client noise.
    assert second.returncode == 3
    err = second.stderr.decode()
    assert f"pid {first.pid} is already its writer" in err and "Unclosed" not in err and "Traceback" not in err
    # A worker that loses the race for the lock (started past that check) fails with the lock's
    # message and leaves no Kafka client unclosed behind it.
    assert "another process (pid" in _worker_refused_in_process(pipeline.settings())
    assert first.poll() is None
    assert stop_process(first) == 0


def _worker_refused_in_process(settings) -> str:
    import gc
    import warnings

    from consumers import STAGES
    from streamer.runtime.worker import Worker
    from streamer.state.manager import StateLockedError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StateLockedError) as refused:
            asyncio.run(Worker(settings, [STAGES["dedup"]], sink=False, progress=False).run())
        message = str(refused.value)
        del refused  # its traceback holds the worker's clients: let them be collected now
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)], [str(w.message) for w in caught]
    return message
