"""dedup (instructions.embedded → instructions.unique, duplicates → rejected): one writer.

Exact duplicates (same normalised text) first, then cosine similarity ≥ `threshold` against
everything kept so far. Records are decided in batches, in input order: one index search for
the batch, then each record against the index hits and against the records kept earlier in the
same batch. The index is exact inner product while small and IVF beyond `exact_limit`.

Its state is rebuilt from its own outputs — `instructions.unique` (which carries the embeddings)
and its rejections on `rejected` — with snapshots as a cache (streamer.state.manager); input is a single
partition, so only one member writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from consumers.payloads import DedupOutcome, EmbeddedInstruction, Rejection
from streamer.runtime.batching import MicroBatcher
from streamer.runtime.embedding import unpack_vector
from streamer.records import Envelope, stable_hash
from streamer.runtime.stage import Emit, Stage, StageContext
from streamer.state.manager import StateSpec
from streamer.text import fold_text

if TYPE_CHECKING:
    import faiss

NAME = "dedup"
KEPT, REJECTED = "instructions.unique", "rejected"


class DedupOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity at which a record is a duplicate")
    index: Literal["auto", "flat", "ivf"] = "auto"
    # 4096 lists probed 16 at a time: < 2 ms per check at 1M kept records; training wants
    # ~39 points per list, hence the exact limit of 200k.
    exact_limit: int = Field(200_000, ge=1000, description="auto: exact search up to this many kept records")
    ivf_lists: int = Field(4096, ge=16)
    ivf_probe: int = Field(16, ge=1)
    batch_size: int = Field(256, ge=1)


@dataclass
class Decision:
    kept: bool
    nearest_id: str | None = None
    similarity: float = 0.0
    exact: bool = False
    redelivered: bool = False  # kept before under this input id: its first neighbour is not known here

    def lineage(self) -> dict:
        """The decision as the record's lineage carries it to the sample (or the rejection)."""
        decision = "kept" if self.kept else "exact_duplicate" if self.exact else "near_duplicate"
        known = self.nearest_id is not None and not self.redelivered
        return DedupOutcome(decision=decision, nearest_id=self.nearest_id if known else None,
                            similarity=round(self.similarity, 4) if known else None).model_dump()


def text_key(text: str) -> str:
    return stable_hash(fold_text(text).casefold())


class DedupIndex:
    """Kept records: FAISS vectors by position, plus exact-text and input-id lookups."""

    def __init__(self, options: DedupOptions) -> None:
        self.options = options
        self.index: faiss.Index | None = None
        self.ids: list[str] = []  # index position -> kept record id (as on instructions.unique)
        self.by_input: dict[str, str] = {}  # kept input id -> kept record id (redeliveries)
        self.by_text: dict[str, str] = {}  # normalised text hash -> kept record id
        # Rejected input id -> its decision. A redelivered record can carry other content under
        # the same id (an upstream stage saw a fuller table the second time); its first decision
        # stands, so one input is never both kept and rejected.
        self.rejected: dict[str, Decision] = {}
        self.batcher: MicroBatcher = MicroBatcher(self._decide_batch, max_size=options.batch_size, max_wait=0.005)
        # One search thread, so FAISS keeps one OpenMP team (a team per pool thread would spin
        # against the encoder when embed runs in the same process).
        self._search_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss")

    # StageState -----------------------------------------------------------------------------
    def size(self) -> int:
        return len(self.ids)

    def apply(self, envelope: Envelope, payload: EmbeddedInstruction | Rejection) -> None:
        if isinstance(payload, Rejection):
            if payload.stage == NAME and envelope.parent_id and envelope.parent_id not in self.by_input:
                nearest = envelope.lineage.details.get("duplicate_of")
                self.rejected.setdefault(envelope.parent_id, Decision(
                    False, nearest, float(payload.score or 0.0), exact=payload.reason.startswith("exact")))
            return
        if envelope.parent_id in self.by_input:
            return
        vector = unpack_vector(payload.embedding)
        self._add(envelope.id, envelope.parent_id or envelope.id, text_key(payload.instruction), vector)

    def save(self, directory: Path) -> None:
        import faiss  # here, not at the top: only a process running dedup pays for it
        if self.index is not None:
            faiss.write_index(self.index, str(directory / "index.faiss"))
        (directory / "entries.json").write_bytes(orjson.dumps(
            {"ids": self.ids, "by_input": self.by_input, "by_text": self.by_text,
             "rejected": {k: asdict(v) for k, v in self.rejected.items()}}))

    def load(self, directory: Path) -> None:
        import faiss
        entries = orjson.loads((directory / "entries.json").read_bytes())
        index_path = directory / "index.faiss"
        index = faiss.read_index(str(index_path)) if index_path.exists() else None
        if (index.ntotal if index is not None else 0) != len(entries["ids"]):
            raise ValueError("index and entries disagree")
        self.index, self.ids = index, entries["ids"]
        self.by_input, self.by_text = entries["by_input"], entries["by_text"]
        self.rejected = {k: Decision(**v) for k, v in entries.get("rejected", {}).items()}
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = self.options.ivf_probe

    # Deciding -------------------------------------------------------------------------------
    def decide(self, input_id: str, output_id: str, item: EmbeddedInstruction) -> asyncio.Future[Decision]:
        """Queue a record for a decision; records are decided in the order they are queued."""
        return self.batcher.submit((input_id, output_id, item))

    async def _decide_batch(self, batch: list[tuple[str, str, EmbeddedInstruction]]) -> list[Decision]:
        vectors = np.stack([unpack_vector(item.embedding) for _, _, item in batch])
        # Off the loop (hundreds of ms for a batch at 1M); batches run one at a time, so the
        # index does not change meanwhile.
        loop = asyncio.get_running_loop()
        hits_sim, hits_pos = await loop.run_in_executor(self._search_thread, self._search, vectors)
        kept_here: list[int] = []  # rows of `vectors` kept earlier in this batch
        decisions = []
        for row, (input_id, output_id, item) in enumerate(batch):
            if input_id in self.by_input:  # redelivered: decided (and kept) before
                decisions.append(Decision(kept=True, nearest_id=self.by_input[input_id], similarity=1.0,
                                          redelivered=True))
                continue
            if input_id in self.rejected:
                decisions.append(self.rejected[input_id])
                continue
            key = text_key(item.instruction)
            if key in self.by_text:
                decisions.append(self._reject(input_id, Decision(False, self.by_text[key], 1.0, exact=True)))
                continue
            best_sim, best_id = -1.0, None
            if hits_pos is not None and hits_pos[row] >= 0:
                best_sim, best_id = float(hits_sim[row]), self.ids[hits_pos[row]]
            if kept_here:
                sims = vectors[kept_here] @ vectors[row]
                j = int(np.argmax(sims))
                if sims[j] > best_sim:
                    best_sim, best_id = float(sims[j]), self._kept_id_of_row(batch, kept_here[j])
            if best_sim >= self.options.threshold:
                decisions.append(self._reject(input_id, Decision(False, best_id, best_sim)))
                continue
            self._add(output_id, input_id, key, vectors[row])
            kept_here.append(row)
            decisions.append(Decision(kept=True, nearest_id=best_id, similarity=max(best_sim, 0.0)))
        if self._outgrown():
            # Training takes seconds at this size: off the event loop, between batches (batches
            # run one at a time, so nothing reads the index meanwhile).
            self.index = await loop.run_in_executor(self._search_thread, self._to_ivf, self.index)
        return decisions

    def _reject(self, input_id: str, decision: Decision) -> Decision:
        self.rejected[input_id] = decision
        return decision

    @staticmethod
    def _kept_id_of_row(batch: list[tuple[str, str, EmbeddedInstruction]], row: int) -> str:
        return batch[row][1]

    def _search(self, vectors: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.index is None or self.index.ntotal == 0:
            return None, None
        sims, positions = self.index.search(vectors, 1)
        return sims[:, 0], positions[:, 0]

    def _add(self, output_id: str, input_id: str, key: str, vector: np.ndarray) -> None:
        if self.index is None:
            self.index = self._new_index(vector.shape[0])
        self.index.add(vector.reshape(1, -1).astype(np.float32))
        self.ids.append(output_id)
        self.by_input[input_id] = output_id
        self.by_text.setdefault(key, output_id)

    def _outgrown(self) -> bool:
        import faiss
        return (self.options.index == "auto" and isinstance(self.index, faiss.IndexFlat)
                and self.index.ntotal > self.options.exact_limit)

    def _new_index(self, dim: int) -> faiss.Index:
        import faiss
        if self.options.index == "ivf":
            raise ValueError("index = 'ivf' needs training data: start with 'auto' (exact until exact_limit)")
        return faiss.IndexFlatIP(dim)

    def _to_ivf(self, flat: faiss.IndexFlat) -> faiss.Index:
        """Beyond exact_limit, exact search costs grow linearly: move to an inverted-file index
        trained on what is kept so far (near-duplicates are close, so few lists need probing)."""
        vectors = flat.reconstruct_n(0, flat.ntotal)
        return build_ivf(vectors, self.options.ivf_lists, self.options.ivf_probe)


def build_ivf(vectors: np.ndarray, lists: int, probe: int) -> faiss.Index:
    import faiss
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = probe
    return index


def new_state(settings, options: DedupOptions) -> DedupIndex:
    return DedupIndex(options)


async def dedup(item: EmbeddedInstruction, ctx: StageContext) -> list[Emit]:
    decision = await ctx.resources.decide(ctx.record.id, ctx.output_id(), item)
    if decision.kept:
        return [Emit(item, details={"dedup": decision.lineage()})]
    kind = "exact duplicate" if decision.exact else f"near-duplicate (cosine {decision.similarity:.3f})"
    rejection = Rejection(stage=ctx.stage, reason=f"{kind} of {decision.nearest_id}", score=decision.similarity,
                          record=item.model_dump(exclude={"embedding"}))
    details = {"duplicate_of": decision.nearest_id, "similarity": round(decision.similarity, 4),
               "dedup": decision.lineage()}
    return [Emit(rejection, topic="rejected", details=details)]


STAGE = Stage(
    name=NAME,
    input_topic="instructions.embedded",
    output_topics=(KEPT, REJECTED),
    input_model=EmbeddedInstruction,
    process=dedup,
    concurrency=512,  # in flight at once so batches fill; decisions stay in input order
    options_model=DedupOptions,
    state=StateSpec(changelogs={KEPT: EmbeddedInstruction, REJECTED: Rejection}, factory=new_state),
    description="exact + semantic (FAISS) dedup against everything kept so far; single writer",
)
