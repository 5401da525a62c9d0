"""`python -m streamer.cli`: the same as the `synthstream` command."""

from streamer.cli import entry

entry()
