"""State of a stateful stage, rebuilt from changelog topics and cached in snapshots.

The stage's state is a fold over changelog topics (for dedup: its own output topics, which hold
every kept record with its embedding and every rejection). A snapshot is only a cache of that
fold plus the changelog offsets it covers and the changelogs' incarnations: on start the runtime
loads the newest usable snapshot and applies the changelog from there, or rebuilds from the
beginning when there is none. Applying must be idempotent (a snapshot may already hold records
past its offsets).

A snapshot taken on an earlier incarnation of its changelogs (the broker restarted empty, or
the topics were recreated) is still true knowledge — for dedup, what was kept — so its entries
are kept and the new topics are applied from their beginning. A snapshot written while the
broker is away has no offsets and is completed the same way.

One writer per state: the state directory is locked (flock) for the life of the process, so a
second instance on the same machine fails fast instead of corrupting the index; across machines
the stage's single-partition input gives the partition, and so the writing, to one member only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from aiokafka.errors import KafkaError

from streamer.config import Settings, StageSettings
from streamer.kafka.incarnation import incarnations, short
from streamer.records import Envelope, RecordData
from streamer.kafka.reader import ends_of_topics, read_changelog
from streamer.locks import process_alive, try_lock, unlock

log = logging.getLogger(__name__)

ENDS_TIMEOUT = 15.0  # reading the changelogs' ends for a snapshot; beyond it, the broker is away


class StageState(Protocol):
    def apply(self, envelope: Envelope, payload: Any) -> None:
        """Fold one changelog record into the state (idempotent)."""

    def save(self, directory: Path) -> None:
        """Write the state into an empty directory."""

    def load(self, directory: Path) -> None:
        """Read a state written by `save`; raise on anything unusable."""

    def size(self) -> int: ...


@dataclass(frozen=True)
class StateSpec:
    changelogs: dict[str, type[RecordData]]  # topic -> its records' model, applied in this order
    factory: Callable[[StageSettings, Any], StageState]


class StateLockedError(RuntimeError):
    pass


LOCK_FILE = "writer.lock"


def state_directory(settings: Settings, stage: str) -> Path:
    return settings.storage.data_dir / "state" / f"{settings.kafka.topic_prefix}{stage}"


def live_writer(directory: Path) -> int | None:
    """The pid of the live process holding the state at `directory`, or None.

    The writer writes its pid into the lock file. Only a live pid is confirmed by taking the lock
    for an instant (the pid may have been reused): probing every time could refuse a writer
    starting at that very instant, and a dead writer's lock is free anyway."""
    path = directory / LOCK_FILE
    pid = _pid_in(path) if path.exists() else 0
    if not pid or pid == os.getpid() or not process_alive(pid):
        return None
    handle = open(path, "a+")  # noqa: SIM115 - closed by unlock, or by try_lock when held elsewhere
    if try_lock(handle):
        unlock(handle)
        return None
    return pid


def _pid_in(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class StateManager:
    def __init__(self, spec: StateSpec, settings: Settings, stage: str, stage_settings: StageSettings,
                 options: Any) -> None:
        self.spec = spec
        self.settings = settings
        self.stage_settings = stage_settings
        self.options = options
        self.directory = state_directory(settings, stage)
        self.snapshot_dir = self.directory / "snapshot"
        self.state: StageState = spec.factory(stage_settings, options)
        self._lock_file: Any = None
        self._since_snapshot = 0
        self.incarnations: dict[str, str] = {}  # changelog -> incarnation, as of the last restore

    def lock(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process life
        if not try_lock(handle):
            raise StateLockedError(f"another process (pid {_pid_in(self.directory / LOCK_FILE) or '?'}) is the "
                                   f"writer of {self.directory}; this stage allows a single writer")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            unlock(self._lock_file)
            self._lock_file = None

    async def restore(self) -> None:
        """Snapshot (if usable) + the changelog after it; else the whole changelog."""
        started = time.monotonic()
        self.incarnations = await incarnations(self.settings, list(self.spec.changelogs))
        ends = await self._changelog_ends()
        starts, how = self._load_snapshot(ends)
        applied = 0

        def apply(envelope: Envelope, payload: Any) -> None:
            nonlocal applied
            self.state.apply(envelope, payload)
            applied += 1

        for topic, model in self.spec.changelogs.items():
            await read_changelog(self.settings, topic, model, apply, starts.get(topic))
        log.info("state %s: %s + %d changelog records from %s -> %d entries in %.1fs", self.directory.name, how,
                 applied, ", ".join(self.spec.changelogs), self.state.size(), time.monotonic() - started)

    async def _changelog_ends(self) -> dict[str, dict[int, int]]:
        return await ends_of_topics(self.settings, list(self.spec.changelogs))

    def _load_snapshot(self, ends: dict[str, dict[int, int]]) -> tuple[dict[str, dict[int, int]], str]:
        """Where to apply each changelog from (missing: its beginning), and what was loaded."""
        meta_path = self.snapshot_dir / "meta.json"
        if not meta_path.exists():
            return {}, "no usable snapshot: rebuilt"
        try:
            meta = json.loads(meta_path.read_text())
            self.state.load(self.snapshot_dir)
        except Exception as exc:  # noqa: BLE001 - any unreadable snapshot means: rebuild
            log.warning("state %s: snapshot unreadable (%s); rebuilding from %s", self.directory.name, exc,
                        ", ".join(self.spec.changelogs))
            self.state = self.spec.factory(self.stage_settings, self.options)
            return {}, "no usable snapshot: rebuilt"
        loaded = f"snapshot with {self.state.size()} entries"
        offsets = meta.get("changelog_offsets")
        if offsets is None:
            return {}, f"{loaded} (taken while the broker was away: changelogs applied from their beginning)"
        starts = {topic: {int(p): int(o) for p, o in offsets.get(topic, {}).items()} for topic in self.spec.changelogs}
        taken_on = meta.get("incarnations") or {}
        replaced = [t for t in self.spec.changelogs
                    if (t in taken_on and taken_on[t] != self.incarnations.get(t))
                    or any(o > ends[t].get(p, 0) for p, o in starts[t].items())]
        if replaced:
            was = ", ".join(f"{t} {short(taken_on[t]) if t in taken_on else '?'} -> "
                            f"{short(self.incarnations[t]) if t in self.incarnations else 'gone'}" for t in replaced)
            log.warning("state %s: its snapshot (%d entries) was taken on an earlier incarnation of %s (%s; a "
                        "restarted broker?): keeping its entries and applying the new topics from their beginning",
                        self.directory.name, self.state.size(), ", ".join(replaced), was)
            return {}, f"{loaded} of an earlier incarnation"
        return starts, loaded
    @property
    def dirty(self) -> bool:
        return self._since_snapshot > 0

    def note_processed(self) -> bool:
        """Count a finished record; True when a snapshot is due."""
        self._since_snapshot += 1
        return self._since_snapshot >= self.stage_settings.snapshot_every

    async def snapshot(self, *, broker_away: bool = False) -> None:
        """Write the state and the changelog offsets it covers, replacing the last snapshot whole.
        With the broker away the offsets cannot be known: the snapshot then has none, and the
        next restore applies the changelogs from their beginning (idempotent, only slower)."""
        self._since_snapshot = 0
        # Everything in the changelog up to its end now was decided before being produced, so the
        # state covers at least these offsets (applying more later is harmless: idempotent).
        offsets = None
        if not broker_away:
            try:
                offsets = await asyncio.wait_for(self._changelog_ends(), ENDS_TIMEOUT)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                log.warning("state %s: changelog ends unknown (%s); snapshot written without offsets",
                            self.directory.name, exc)
        staging = self.directory / f"snapshot.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # In the loop, not a thread: the state must not change while it is written.
        self.state.save(staging)
        (staging / "meta.json").write_text(json.dumps({
            "changelog_offsets": offsets, "incarnations": self.incarnations, "entries": self.state.size(),
            "written_at": time.time()}))
        old = self.directory / "snapshot.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.snapshot_dir.exists():
            os.replace(self.snapshot_dir, old)
        os.replace(staging, self.snapshot_dir)
        shutil.rmtree(old, ignore_errors=True)
        log.info("state %s: snapshot of %d entries covering %s", self.directory.name, self.state.size(),
                 offsets if offsets is not None else "(offsets unknown: broker away)")
