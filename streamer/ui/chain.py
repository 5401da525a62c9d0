"""One sample with its whole chain, for the sample viewer: the export's view of the stored sample
(`sample_view`), plus the stored records it points at — its example seeds as `seeds.attributed`
stored them, and the sample of the instruction dedup compared it with."""

from __future__ import annotations

import asyncio
from typing import Any

from streamer.config import Settings
from streamer.storage import store
from streamer.storage.samples import sample_view
from streamer.ui.topics import find_on_topics, stored

RECENT_SAMPLES = 200


def recent_samples(settings: Settings, limit: int = RECENT_SAMPLES) -> list[dict[str, Any]]:
    """The last stored samples (store order), for the viewer's list."""
    rows: list[dict[str, Any]] = []
    for env in stored(settings, "samples"):
        data = env.get("data") or {}
        rows.append({"id": env.get("id"), "method": env.get("method"), "simulated": bool(env.get("simulated")),
                     "instruction": str(data.get("instruction", ""))[:160], "created_at": env.get("created_at")})
        del rows[:-limit]
    return rows[::-1]


def _stored_sample(settings: Settings, index: store.IdIndex, sample_id: str) -> dict[str, Any] | None:
    """A stored sample by its id, through the store's id index (one file read). By its instruction's
    id (what dedup decisions name; the index holds record ids only) the samples are read through."""
    found = index.find(sample_id, settings.kafka.topic_prefix)
    if found is not None:
        topic, env = found
        return env if topic == "samples" else None
    return next((env for env in stored(settings, "samples") if env.get("parent_id") == sample_id), None)


def _attributed_seeds(settings: Settings, seed_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Stored attributed seeds by the id of the seed they came from (a sample's `seed_ids`)."""
    wanted, found = set(seed_ids), {}
    for env in stored(settings, "seeds.attributed"):
        for key in (env.get("root_id"), env.get("id")):
            if key in wanted:
                found[key] = env
    return found


def chain_from_store(settings: Settings, index: store.IdIndex, sample_id: str) -> dict[str, Any] | None:
    env = _stored_sample(settings, index, sample_id)
    return None if env is None else chain_of(settings, index, env, found_in="store")


def chain_of(settings: Settings, index: store.IdIndex, env: dict[str, Any], found_in: str) -> dict[str, Any]:
    view = sample_view(env)
    seeds = view.get("seeds") or []
    seed_ids = [s.get("id") for s in seeds if isinstance(s, dict)] or (env.get("lineage") or {}).get("seed_ids") or []
    attributed = _attributed_seeds(settings, seed_ids)
    dedup = view.get("dedup") or {}
    nearest = _stored_sample(settings, index, dedup["nearest_id"]) if dedup.get("nearest_id") else None
    return {"found_in": found_in, "view": view, "envelope": env,
            "seeds_stored": [attributed.get(i) for i in seed_ids],
            "nearest": None if nearest is None else {"id": nearest.get("id"),
                                                     "instruction": (nearest.get("data") or {}).get("instruction")}}


async def sample_chain(settings: Settings, index: store.IdIndex, sample_id: str) -> dict[str, Any] | None:
    """The chain of a stored sample, or of one still only on the `samples` topic."""
    chain = await asyncio.to_thread(chain_from_store, settings, index, sample_id)
    if chain is not None:
        return chain
    found = await find_on_topics(settings, sample_id, topics=("samples",))
    if found is None:
        return None
    return await asyncio.to_thread(chain_of, settings, index, found["envelope"], "topic")
