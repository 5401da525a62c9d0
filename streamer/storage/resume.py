"""What the store says is finished, so a feed after a broker loss sends only unfinished work.

A fed record (document or seed) is finished once something derived from it reached the store:
a document as a sample, a rejection or a dead letter; a seed as an attributed seed, a rejection
or a dead letter. Everything else is fed again, and the response cache makes the LLM calls
that had already been made for it free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import orjson

from streamer.storage import store

FedKind = Literal["docs", "seeds"]

# Topics whose every row ends a root of that kind, and topics whose rows end roots of any kind.
ENDS_BY_ROOT = {"docs": "samples", "seeds": "seeds.attributed"}
ENDS_ANY_ROOT = ("rejected", "dlq")


def _of_kind(envelope: dict, kind: FedKind) -> bool:
    """Does this stored record descend from a document (docs) or from a seed instruction (seeds)?"""
    lineage = envelope.get("lineage") or {}
    if kind == "docs":
        return lineage.get("document_id") is not None and lineage.get("document_id") == envelope.get("root_id")
    return lineage.get("document_id") is None and envelope.get("method") is None


def root_key(root_id: str) -> bytes | None:
    """Ids as the feed keeps them (16 bytes, not 32 characters); None for an id not ours."""
    try:
        return bytes.fromhex(root_id)
    except ValueError:
        return None


def finished_roots(store_dir: Path, prefix: str, kind: FedKind) -> set[bytes]:
    """Root ids (as `root_key`s) of fed records of `kind` that already ended in the store."""
    done: set[bytes | None] = set()
    for path in store.files(store_dir, f"{prefix}{ENDS_BY_ROOT[kind]}"):
        done.update(root_key(root) for root in store.column(path, "root_id"))
    for topic in ENDS_ANY_ROOT:
        for path in store.files(store_dir, f"{prefix}{topic}"):
            for text in store.column(path, "envelope"):
                try:
                    envelope = orjson.loads(text)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(envelope, dict) and isinstance(envelope.get("root_id"), str) and _of_kind(envelope, kind):
                    done.add(root_key(envelope["root_id"]))
    done.discard(None)
    return done  # type: ignore[return-value]
