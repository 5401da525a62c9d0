"""`status --until-idle`'s judgement on samples of offsets: idle only after two looks in a row with
nothing left and no topic grown in between; a stage with work left and no commits is named."""

from __future__ import annotations

import re
from collections import Counter

from aiokafka import TopicPartition

from streamer.ops.idle import IdleWatch
from streamer.ops.status.sample import Sample, Watched

DOCS, SITUATIONS = TopicPartition("s.docs", 0), TopicPartition("s.situations", 0)
GROUPS = [Watched("situation", "s.situation", ("s.docs",)), Watched("instruction", "s.instruction", ("s.situations",))]


def sample(docs_end: int, situations_end: int, situation_at: int | None, instruction_at: int | None,
           waiting: dict[str, str] | None = None) -> Sample:
    ends = {DOCS: docs_end, SITUATIONS: situations_end}
    committed = {"s.situation": {DOCS: situation_at}, "s.instruction": {SITUATIONS: instruction_at}}
    return Sample(0.0, {DOCS: 0, SITUATIONS: 0}, ends, committed, {"s.rejected": Counter()}, waiting=waiting or {})


def test_idle_needs_two_quiet_looks_with_the_same_ends():
    watch = IdleWatch(GROUPS)
    watch.look(sample(3, 2, 3, 2), now=0)
    assert not watch.idle  # one look can miss a record produced just after a topic's end was read
    watch.look(sample(3, 3, 3, 2), now=1)
    assert not watch.idle and watch.waiting_line(1) == "waiting: instruction 1 left"
    watch.look(sample(3, 3, 3, 3), now=2)
    assert not watch.idle  # situations grew since the look before
    watch.look(sample(3, 3, 3, 3), now=3)
    assert watch.idle


def test_a_stage_without_progress_is_named_with_a_hint():
    watch = IdleWatch(GROUPS)
    watch.look(sample(5, 0, None, None), now=0)
    watch.look(sample(5, 0, None, None), now=31)
    line = watch.waiting_line(31)
    assert line.startswith("waiting: situation 5 (no progress for 31s: is a worker of it running?)")
    assert "instruction" not in line and not watch.idle
    # What a running worker says its stage waits for comes first.
    watch.look(sample(5, 0, None, None, waiting={"situation": "waiting for attributed seeds"}), now=32)
    assert watch.waiting_line(32) == "waiting: situation 5 (waiting for attributed seeds) left"


def test_until_idle_gives_up_after_its_timeout_naming_what_is_left(pipeline, tmp_path):
    """Documents fed and no worker running: `status --until-idle --timeout` ends non-zero and says
    which stage holds them, instead of waiting for ever."""
    from helpers import make_texts

    pipeline.feed(tmp_path, make_texts(3), seeds=0)
    waited = pipeline.cli("status", "--until-idle", "--interval", "0.3", "--timeout", "2", check=False, timeout=60)
    err = waited.stderr.decode()
    assert waited.returncode == 1, err
    assert re.search(r"not idle after \d+s \(waiting: situation 3 left\)", err), err
