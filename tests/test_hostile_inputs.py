"""Hostile inputs cost bounded work and say what they are: gzip bombs (.warc.gz, .jsonl.gz), a WARC
gzip-compressed as a whole, empty files, among good files in one directory: one message per bad
file, every good document arrives (the memory this takes: bench/hostile_inputs.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from helpers import read_topic
from hostile_inputs import make_hostile_directory

from producers.items import ReadOptions
from producers.readers import BadInput, FeedItem, read_paths

BOMB = 256 << 20  # zeros a bomb decompresses to: four times the record cap
OPTS = ReadOptions(max_record_bytes=64 << 20, max_file_bytes=128 << 20)


def _file_of(location: str) -> str:
    """The file's name in a location: path, path@offset or path:line."""
    path = location.split("@")[0]
    head, _, line = path.rpartition(":")
    return Path(head if head and line.isdigit() else path).name


def test_a_directory_of_bombs_whole_gzip_and_empty_files_yields_every_good_document_and_one_message_per_bad_file(
        tmp_path):
    expected = make_hostile_directory(tmp_path / "in", BOMB)
    items = list(read_paths([str(tmp_path / "in")], OPTS))
    documents = [item for item in items if isinstance(item, FeedItem)]
    assert [d.meta["url"] for d in documents if "url" in d.meta] == expected["urls"]  # none of whole.warc.gz
    assert not set(expected["unsent_urls"]) & {d.meta.get("url") for d in documents}
    assert [d.text for d in documents if "url" not in d.meta] == expected["texts"]
    bad = [item for item in items if isinstance(item, BadInput)]
    files = Counter(_file_of(item.location) for item in bad)
    assert sorted(files) == expected["bad"] and set(files.values()) == {1}, bad  # one message per bad file
    by_file = {_file_of(item.location): item for item in bad}
    assert by_file["bomb.warc.gz"].location.endswith("bomb.warc.gz@0")
    assert "more than 67108864 bytes" in by_file["bomb-record.warc.gz"].reason
    assert by_file["bomb-record.warc.gz"].location.endswith("@0")
    assert by_file["bomb.jsonl.gz"].location.endswith("bomb.jsonl.gz:1")
    assert by_file["whole.warc.gz"].reason.startswith("gzip-compressed as a whole, not record by record: nothing of it "
                                                      "was sent")
    for name in ("empty.jsonl", "empty.warc.gz", "empty.jsonl.gz", "empty.warc"):
        assert by_file[name].reason == "empty file: nothing to read"
    assert by_file["hollow.jsonl.gz"].reason.startswith("nothing to read in it")


def test_feed_docs_on_the_directory_sends_every_good_document_and_names_each_bad_file(pipeline, broker, tmp_path):
    expected = make_hostile_directory(tmp_path / "in", BOMB)
    pipeline.env["SYNTHSTREAM_FEED__MAX_RECORD_BYTES"] = str(64 << 20)
    pipeline.env["SYNTHSTREAM_FEED__MAX_FILE_BYTES"] = str(128 << 20)
    log = pipeline.cli("feed", "docs", str(tmp_path / "in"), timeout=300).stderr.decode()
    good = len(expected["urls"]) + len(expected["texts"])
    assert f"fed {good} records to {pipeline.prefix}docs" in log and f"{len(expected['bad'])} bad inputs skipped" in log
    skipped = [line for line in log.splitlines() if line.startswith("skipped ")]
    locations = [line.removeprefix("skipped ").split(": ")[0] for line in skipped]
    assert sorted(_file_of(location) for location in locations) == expected["bad"]
    data = [record["data"] for record in read_topic(broker.bootstrap_servers, pipeline.prefix + "docs")]
    assert {d["meta"].get("url") for d in data} - {None} == set(expected["urls"])  # none of whole.warc.gz's
    assert sorted(d["text"] for d in data if "url" not in d["meta"]) == sorted(expected["texts"])
