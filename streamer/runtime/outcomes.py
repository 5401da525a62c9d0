"""How the stages of this process fared: records given and dead-lettered, per stage.

`run --until-idle` fails a run in which a stage dead-lettered all (or more than
`run.max_dlq_share`) of what it was given, and a stage waiting for a table learns here that the
table's writer dead-letters everything (so waiting cannot help): a writer in this process from its
runner, one in another worker process from that worker's run file (streamer.metrics.runs, written
every 2 s)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from streamer.config import Settings
from streamer.metrics import runs

ELSEWHERE_EVERY = 2.0  # seconds between reads of the other workers' run files


@dataclass
class Outcome:
    stage: str
    given: int = 0  # input records finished (their outputs acknowledged)
    dead: int = 0  # of them, ended as a dead letter
    last_error: str = ""
    idle: Callable[[], bool] = lambda: False  # its input read to the end, nothing in flight (set by its runner)

    def note(self, outputs: Iterable[Any]) -> None:  # runtime.processor.Output
        self.given += 1
        for output in outputs:
            if output.topic == "dlq":
                self.dead += 1
                self.last_error = str(output.envelope.data.get("error", ""))[:300]
                break

    @property
    def all_dead(self) -> bool:
        return self.given > 0 and self.dead == self.given

    def snapshot(self) -> dict[str, Any]:
        return {"given": self.given, "dead": self.dead, "last_error": self.last_error, "idle": self.idle()}

    @classmethod
    def combined(cls, stage: str, snapshots: list[dict[str, Any]]) -> Outcome | None:
        """The outcome of a stage's workers together; None unless every one of them is idle."""
        if not snapshots or not all(s.get("idle") for s in snapshots):
            return None
        given, dead = sum(int(s.get("given", 0)) for s in snapshots), sum(int(s.get("dead", 0)) for s in snapshots)
        last = next((str(s.get("last_error")) for s in snapshots if s.get("last_error")), "")
        return cls(stage, given, dead, last, idle=lambda: True)

    def describe(self) -> str:
        what = "all" if self.all_dead else f"{self.dead} of"
        last = f" (last: {self.last_error})" if self.last_error else ""
        return f"{self.stage} dead-lettered {what} {self.given} records it was given{last}"


_OUTCOMES: dict[str, Outcome] = {}


def of(stage: str) -> Outcome:
    if stage not in _OUTCOMES:
        _OUTCOMES[stage] = runs.OUTCOMES[stage] = Outcome(stage)
    return _OUTCOMES[stage]


def known(stage: str) -> Outcome | None:
    return _OUTCOMES.get(stage)


def hopeless(writers: Iterable[str], elsewhere: Callable[[str], Outcome | None] = lambda stage: None) -> str | None:
    """Why a table these stages write will stay empty: each of them (in this process, else as
    `elsewhere` finds it) has read all its input and dead-lettered every record of it. None while
    it may still fill."""
    found = [_OUTCOMES.get(w) or elsewhere(w) for w in writers]
    if not found or any(o is None or not o.all_dead or not o.idle() for o in found):
        return None
    return "; ".join(o.describe() for o in found if o is not None)


class OtherWorkers:
    """How stages fare in this pipeline's other worker processes, read from their run files at
    most every ELSEWHERE_EVERY seconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.read_at = float("-inf")
        self.snapshots: dict[str, list[dict[str, Any]]] = {}

    def outcome(self, stage: str) -> Outcome | None:
        if time.monotonic() - self.read_at >= ELSEWHERE_EVERY:
            self.read_at = time.monotonic()
            try:
                self.snapshots = runs.live_outcomes(self.settings)
            except OSError:
                self.snapshots = {}
        return Outcome.combined(stage, self.snapshots.get(stage, []))


def failed_stages(stages: Iterable[str], max_share: float) -> list[Outcome]:
    """The stages that dead-lettered everything they were given, or more than `max_share` of it."""
    out = []
    for name in stages:
        outcome = _OUTCOMES.get(name)
        if outcome is not None and (outcome.all_dead or outcome.dead > max_share * outcome.given):
            out.append(outcome)
    return out
