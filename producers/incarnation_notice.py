"""The one line a feeder prints when the broker's topics are not the ones this data dir last saw."""

from __future__ import annotations

import sys

from consumers import TOPICS
from streamer.config import Settings
from streamer.kafka.clients import TopicNames
from streamer.kafka.incarnation import SeenIncarnations, incarnations, replaced_line


async def note_incarnations(settings: Settings, out=sys.stderr) -> list[str]:
    """Tell the user (one line) when the broker's topics are not the ones this data dir last saw;
    remember the current ones. Returns the replaced topics."""
    current = await incarnations(settings, list(TOPICS))
    names = TopicNames(settings.kafka.topic_prefix)
    seen = SeenIncarnations(settings.storage.data_dir)
    full = {names(t): i for t, i in current.items()}
    replaced = seen.replaced(full)
    if replaced:
        print(replaced_line(settings.kafka.bootstrap_servers, replaced, settings.kafka.topic_prefix), file=out,
              flush=True)
    seen.note(full)
    return replaced
