"""Which single-writer stages already have their writer running on this machine (for `run`).

A stage with state (dedup) allows one writer per data dir. `run` asks before it starts anything,
so a second writer is refused, or left out of a whole-pipeline run, without touching Kafka.
"""

from __future__ import annotations

from typing import Sequence

from streamer.config import Settings
from streamer.runtime.stage import Stage
from streamer.state.manager import live_writer, state_directory


def running_writers(settings: Settings, stages: Sequence[Stage]) -> dict[str, int]:
    """Stage name -> pid of the live process writing its state, for
    the stateful stages among `stages` whose state another process holds."""
    held = {}
    for stage in stages:
        if stage.state is not None and (pid := live_writer(state_directory(settings, stage.name))) is not None:
            held[stage.name] = pid
    return held
