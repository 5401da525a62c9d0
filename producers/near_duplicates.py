"""Near-duplicate documents, before any LLM call: MinHash-LSH over word shingles (datasketch).

Mirrored pages and near copies (another date line, another footer) get ids of their own, so the
exact-duplicate check lets them through. Each document's MinHash (5-word shingles) is looked up in
an LSH index of every document fed before, in this run and earlier ones; one whose estimated
Jaccard similarity to an indexed document reaches the threshold is rejected, naming that document.

The index persists like a stateful stage's: one writer at a time (a file lock, so two feeders
cannot both let a page through), every kept document's signature appended to
`<data_dir>/state/feed.near-duplicates/<topic>.minhash` as it is sent, and the LSH index rebuilt
from that file at start (signatures only: a few hundred bytes per document, no texts).
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from streamer.locks import try_lock, unlock

NUM_PERM = 128
SHINGLE_WORDS = 5
FIND_AT_THRESHOLD = 0.98  # the least chance the LSH proposes a document exactly at the threshold
_ID_BYTES = 8  # record ids are 16 hex digits
_RECORD_BYTES = _ID_BYTES + NUM_PERM * 4
SCHEME = "affine32"  # datasketch's 32-bit permutations: signatures stored as uint32, named so a
                     # later datasketch default cannot silently change what the file means
_WORD = re.compile(r"\w+")


class NearDuplicatesBusyError(RuntimeError):
    """Another feeder holds the near-duplicate index of this topic."""


class NearDuplicates:
    def __init__(self, directory: Path, topic: str, threshold: float) -> None:
        from datasketch import MinHashLSH  # imported here: only `feed docs` with the check needs it

        self.path = directory / f"{topic}.minhash"
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, params=banding(threshold))
        self.signatures: dict[str, np.ndarray] = {}
        self._file: BinaryIO | None = None
        self.loaded = 0

    def open(self) -> NearDuplicates:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held until close()
        if not try_lock(handle):
            raise NearDuplicatesBusyError(f"another feed is writing the near-duplicate index {self.path}; "
                                          f"feed one input at a time per topic")
        self._file = handle
        self._load()
        return self

    def _load(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        data = self._file.read()
        whole = len(data) - len(data) % _RECORD_BYTES  # a record cut short by a crash is dropped
        for start in range(0, whole, _RECORD_BYTES):
            doc_id = data[start:start + _ID_BYTES].hex()
            self._index(doc_id, np.frombuffer(data, dtype=np.uint32, count=NUM_PERM, offset=start + _ID_BYTES))
        if whole != len(data):
            self._file.truncate(whole)
        self.loaded = whole // _RECORD_BYTES

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            unlock(self._file)
            self._file = None

    def nearest(self, doc_id: str, text: str) -> tuple[str, float] | None:
        """The indexed document this one nearly copies, with the estimated Jaccard similarity; None
        if it copies none (the same id is the same document: fed again, not a copy)."""
        signature = minhash(text)
        best: tuple[str, float] | None = None
        for other in self.lsh.query(signature):
            if other == doc_id:
                continue
            similarity = float(np.mean(self.signatures[other] == signature.hashvalues))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, round(similarity, 3))
        return best

    def add(self, doc_id: str, text: str) -> None:
        """Index a document that was kept (and write its signature, so a restart knows it)."""
        if doc_id in self.signatures:
            return
        values = minhash(text).hashvalues
        self._index(doc_id, values)
        assert self._file is not None
        self._file.write(bytes.fromhex(doc_id) + values.astype(np.uint32, copy=False).tobytes())

    def _index(self, doc_id: str, values: np.ndarray) -> None:
        from datasketch import MinHash

        if doc_id in self.signatures:
            return
        self.signatures[doc_id] = values
        self.lsh.insert(doc_id, MinHash(num_perm=NUM_PERM, hashvalues=values, scheme=SCHEME,
                                        permutations=_permutations()))


def banding(threshold: float) -> tuple[int, int]:
    """LSH bands and rows per band that propose a document at the threshold 98% of the time.

    datasketch's own choice for 0.7 (14 bands of 9 rows) proposes a copy at similarity 0.8 only
    seven times in eight. Every proposal is checked against the threshold anyway, so an extra one
    costs a comparison while a miss feeds a copy: take the most rows (fewest false proposals)
    that still find FIND_AT_THRESHOLD (0.7: 25 bands of 5; 99.99% at 0.8)."""
    def found(rows: int) -> float:
        return 1 - (1 - threshold ** rows) ** (NUM_PERM // rows)
    rows = max((r for r in range(1, NUM_PERM + 1) if found(r) >= FIND_AT_THRESHOLD), default=1)
    return NUM_PERM // rows, rows


def minhash(text: str):
    """MinHash of the text's lower-cased 5-word shingles (all its words when it has fewer)."""
    from datasketch import MinHash

    words = _WORD.findall(text.lower())
    shingles = {" ".join(words[i:i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    signature = MinHash(num_perm=NUM_PERM, scheme=SCHEME, hashfunc=zlib.crc32, permutations=_permutations())
    signature.update_batch([s.encode() for s in shingles])
    return signature


@functools.lru_cache(maxsize=1)
def _permutations():
    """The permutations (seed 1) made once: datasketch would draw them again for every MinHash.
    Shingles are hashed with CRC-32 (in C, ~7x faster than datasketch's SHA-1 in Python here);
    the affine32 scheme mixes the values before permuting, so CRC's structure does not show."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, scheme=SCHEME).permutations
