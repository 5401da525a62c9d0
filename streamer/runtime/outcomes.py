"""How the stages of this process fared: records given and dead-lettered, per stage.

`run --until-idle` fails a run in which a stage dead-lettered all (or more than
`run.max_dlq_share`) of what it was given, and a stage waiting for a table learns here that the
table's writer, in this process, dead-letters everything (so waiting cannot help)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable


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

    def describe(self) -> str:
        what = "all" if self.all_dead else f"{self.dead} of"
        last = f" (last: {self.last_error})" if self.last_error else ""
        return f"{self.stage} dead-lettered {what} {self.given} records it was given{last}"


_OUTCOMES: dict[str, Outcome] = {}


def of(stage: str) -> Outcome:
    return _OUTCOMES.setdefault(stage, Outcome(stage))


def known(stage: str) -> Outcome | None:
    return _OUTCOMES.get(stage)


def hopeless(writers: Iterable[str]) -> str | None:
    """Why a table these stages write will stay empty: each of them runs in this process, has read
    all its input and dead-lettered every record of it. None while it may still fill."""
    found = [_OUTCOMES.get(w) for w in writers]
    if not found or any(o is None or not o.all_dead or not o.idle() for o in found):
        return None
    return "; ".join(o.describe() for o in found if o is not None)


def failed_stages(stages: Iterable[str], max_share: float) -> list[Outcome]:
    """The stages that dead-lettered everything they were given, or more than `max_share` of it."""
    out = []
    for name in stages:
        outcome = _OUTCOMES.get(name)
        if outcome is not None and (outcome.all_dead or outcome.dead > max_share * outcome.given):
            out.append(outcome)
    return out
