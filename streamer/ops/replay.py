"""`synthstream replay`: make a stage reprocess its input history.

Two ways, both starting from `--from-beginning`, `--offset` or `--since`:
- reset (default): move the stage's consumer group back. It refuses while workers of the stage
  are running, since they hold the positions. The next `run` reprocesses; its outputs get new ids
  (beside the old) when the stage's prompt or model changed, the same ids otherwise.
- `--version V`: run the stage now, in this process, under version V until it has caught up
  with its input. V joins the stage's identity, so every regenerated record gets a new id and
  sits beside the old; the versioned stage has its own consumer group (`<stage>@V`), so the
  running workers of the stage are not disturbed and need not stop. Workers configured with
  `[stages.NAME] version = "V"` later continue in that group from where the replay stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.admin import committed_offsets, rewind_group
from streamer.kafka.clients import TopicNames, is_tansu, use_fast_group_timing
from streamer.kafka.positions import StartAt
from streamer.kafka.topic_ids import BrokerProbe
from streamer.runtime.stage import Stage
from streamer.kafka.reader import end_offsets


class ReplayError(RuntimeError):
    pass


@dataclass
class Replayed:
    group: str
    topic: str
    before: dict[int, int | None]  # the group's committed offsets before the replay
    after: dict[int, int]  # the offsets it was set to (only the partitions asked for)
    identity: str
    done: int = 0  # with --version: input records processed, outputs produced, dead letters
    produced: int = 0
    dead: int = 0

    def offsets_text(self) -> str:
        return ", ".join(f"p{p} {_offset(self.before.get(p))}→{o}" for p, o in sorted(self.after.items()))


def _offset(value: int | None) -> str:
    return "none" if value is None else str(value)


async def reset(settings: Settings, stage: Stage, start: StartAt) -> Replayed:
    """Move the stage's group (raises GroupBusyError while it has active members)."""
    return await _rewind(await _with_broker_timing(settings), stage, start)


async def run_version(settings: Settings, stage: Stage, start: StartAt, version: str, *,
                      progress: bool) -> Replayed:
    """Run `stage` under `version` from `start` until it has caught up with its input."""
    from streamer.runtime.worker import Worker

    if stage.state is not None:
        raise ReplayError(f"stage {stage.name} keeps state built from its own output, so a second version "
                          f"cannot run beside the first; replay it without --version")
    versioned = await _with_broker_timing(settings)
    versioned.stages.setdefault(stage.name, {})["version"] = version
    replayed = await _rewind(versioned, stage, start)
    await Worker(versioned, [stage], sink=False, until_idle=True, progress=progress).run()
    replayed.done = int(metrics.total(metrics.RECORDS_DONE, stage=stage.name))
    replayed.dead = int(metrics.total(metrics.RECORDS_DLQ, stage=stage.name))
    # RECORDS_OUT counts dead letters too (they are outputs on the dlq topic).
    replayed.produced = int(metrics.total(metrics.RECORDS_OUT, stage=stage.name)) - replayed.dead
    return replayed


async def _with_broker_timing(settings: Settings) -> Settings:
    """A copy of `settings` with the group timing workers use on this broker: against tansu, which
    holds a join for half the session timeout and a departed member until its session ends, the
    default timing made a versioned replay wait some 18 s between rewinding and running."""
    adjusted = settings.model_copy(deep=True)
    probe = BrokerProbe(adjusted.kafka)
    try:
        await probe.ask([])
    finally:
        probe.close()
    if is_tansu(probe.cluster_id):
        use_fast_group_timing(adjusted.kafka)
    return adjusted


async def _rewind(settings: Settings, stage: Stage, start: StartAt) -> Replayed:
    bound = stage.bind(settings)
    names = TopicNames(settings.kafka.topic_prefix)
    group, topic = names(bound.group), names(stage.input_topic)
    if not await end_offsets(settings, stage.input_topic):
        raise ReplayError(f"topic {topic} does not exist: stage {stage.name} has no input history to replay")
    before = await committed_offsets(settings, group, topic)
    after = await rewind_group(settings, group, topic, start)
    return Replayed(group, topic, before, after, bound.identity)
