"""`python -m streamer.cli`: the same as the `synthstream` command."""

import sys

from streamer.cli import main

sys.exit(main())
