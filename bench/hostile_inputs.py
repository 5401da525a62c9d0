"""Hostile inputs: what reading them costs the feeder in memory and time.

Builds the directory of tests/hostile_inputs.py (gzip bombs named .warc.gz and .jsonl.gz of
`--bomb-gb` GB of zeros each, a record whose header line is a bomb, a WARC gzip-compressed as a
whole, zero-length files, a gzip of nothing, among a good WARC and two good JSONL files), then
reads it in a child process with the feeder's readers (`producers.readers.read_paths`, the caps
of the default `[feed]` settings) and prints the child's peak RSS (target < 500 MB), its time,
the good documents found and one line per bad file.

    python bench/hostile_inputs.py [--bomb-gb 2]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hostile_inputs import make_hostile_directory  # noqa: E402

RSS_TARGET_MB = 500
CHILD = """
import sys
from producers.items import ReadOptions
from producers.readers import BadInput, FeedItem, read_paths
from streamer.config import FeedSettings
feed = FeedSettings()
opts = ReadOptions(max_bytes=feed.max_doc_bytes, max_record_bytes=feed.max_record_bytes, max_file_bytes=feed.max_file_bytes)
good = 0
for item in read_paths([sys.argv[1]], opts):
    if isinstance(item, FeedItem):
        good += 1
    elif isinstance(item, BadInput):
        print("bad", item.location.replace(sys.argv[1] + "/", ""), "|", item.reason[:90])
print("good", good)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bomb-gb", type=float, default=2.0, help="GB of zeros each bomb decompresses to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "inputs"
        expected = make_hostile_directory(root, int(args.bomb_gb * (1 << 30)))
        size = sum(p.stat().st_size for p in root.iterdir()) / (1 << 20)
        started = time.monotonic()
        child = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=ROOT, capture_output=True, text=True,
                               check=True)
        seconds = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = child.stdout.splitlines()
    bad = [line for line in lines if line.startswith("bad ")]
    good = int(lines[-1].split()[1])
    want = len(expected["urls"]) + len(expected["texts"])
    print(f"bench/hostile_inputs.py: {len(list(expected['bad'])) + 4} files ({size:.1f} MB on disk; bombs of "
          f"{args.bomb_gb:g} GB of zeros), read with the default [feed] caps")
    for line in bad:
        print("  " + line)
    print(f"  good documents: {good} of {want}; bad files: {len(bad)} of {len(expected['bad'])} (one message each)")
    print(f"  peak RSS of the reading process: {peak_mb:.0f} MB (target < {RSS_TARGET_MB} MB)  "
          f"{'PASS' if peak_mb < RSS_TARGET_MB and good == want and len(bad) == len(expected['bad']) else 'FAIL'}; "
          f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
