"""The README's run command: `synthstream demo` on a fresh directory, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamer.records import content_id

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "docs"
SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds.jsonl"
LLM_STAGES = ("situation", "instruction", "judge", "answer")


def test_demo_ends_with_one_row_per_sample_document(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    result = subprocess.run([sys.executable, "-m", "streamer.cli", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 0, err[-3000:]
    assert "started an embedded broker" in err and "using the simulator" in err

    dataset = Path(result.stdout.decode().strip().splitlines()[-1])
    rows = [orjson.loads(line) for line in (tmp_path / dataset).read_bytes().splitlines()]
    n_docs = len(list(EXAMPLES.iterdir()))
    assert n_docs == 30
    assert len(rows) == n_docs and len({r["document"]["id"] for r in rows}) == n_docs
    assert all(r["simulated"] and r["messages"][0]["role"] == "user" for r in rows)
    assert f"({n_docs} rows from {n_docs} documents" in err

    seed_ids = {content_id(orjson.loads(line)["instruction"]) for line in SEEDS.read_bytes().splitlines()}
    for row in rows:
        assert row["method"] == "synthquestions"
        assert row["document"]["id"] == row["root_id"]
        assert len(row["seeds"]) == 3 and {s["id"] for s in row["seeds"]} <= seed_ids
        stamps = {s["stage"]: s for s in row["lineage"]["stages"]}
        for stage in LLM_STAGES:
            assert stamps[stage]["model"] == "synthstream-simulator"
            assert re.fullmatch(r"\d+-[0-9a-f]{8}", stamps[stage]["version"]), stamps[stage]
        lineage = row["lineage"]
        assert lineage["details"]["demo_selection"] == "nearest"
        assert lineage["details"]["example_seed_versions"]
