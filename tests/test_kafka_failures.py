"""Broker failures the way Kafka's replication system tests make them, on the session's 3-node
cluster while two workers run: SIGKILL the leader of `instructions.embedded`, then the active
controller, then a rolling restart of all three. Nothing acknowledged may be lost or repeated, and
the export must be the one the same input makes on tansu."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import checksums, endings, envelopes, expected_ids, make_texts, stop_process, wait_for
from streamer.kafka.apache import KafkaCluster

pytestmark = pytest.mark.slow

BATCH = 12  # documents fed before each disruption


class CompletionClock:
    """When the simulator finished each LLM request (polled every 50 ms): the pipeline's heartbeat,
    from which the stall a disruption caused is read (the longest time without a completion)."""

    def __init__(self, url: str) -> None:
        self.stats_url = url.replace("/v1", "/stats")
        self.ticks: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def completed(self) -> int:
        with urllib.request.urlopen(self.stats_url, timeout=5) as resp:
            return json.load(resp)["completed"]

    def _poll(self) -> None:
        last = -1
        while not self._stop.wait(0.05):
            count = self.completed()
            if count != last:
                self.ticks.append((time.monotonic(), count))
                last = count

    def last_completion(self, start: float, end: float) -> float:
        """The moment of the last completion in [start, end] (start if none)."""
        return max([start, *(t for t, _ in self.ticks if start <= t <= end)])

    def longest_gap(self, start: float, end: float) -> float:
        moments = [start, *(t for t, _ in self.ticks if start < t < end), end]
        return max(b - a for a, b in zip(moments, moments[1:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_leader_kill_controller_kill_and_rolling_restart_end_every_document_exactly_once(
        kafka_pipeline, kafka_cluster: KafkaCluster, broker, start_simulator, tmp_path):
    sim = start_simulator("--latency", "0.3")  # every document spends seconds in the chain: kills land mid-work
    kafka_pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": sim.url, **SAME_EXAMPLES})
    clock = CompletionClock(sim.url)
    texts = make_texts(3 * BATCH)
    # The same input on tansu, undisturbed, beside the Kafka run (it waits mostly on the simulator).
    on_tansu = ReferenceRun(broker, texts, start_simulator().url, tmp_path / "tansu")
    fed: list[str] = []
    stalls: dict[str, tuple[float, float]] = {}
    stored_before: dict[Path, str] = {}
    store = kafka_pipeline.data_dir / "store"
    embedded = kafka_pipeline.prefix + "instructions.embedded"

    def feed_batch(size: int = BATCH) -> float:
        """The next `size` documents onto `docs`; returns once their LLM work is under way."""
        batch = texts[len(fed):len(fed) + size]
        batch_dir = tmp_path / f"batch-{len(fed)}"
        batch_dir.mkdir()
        kafka_pipeline.feed(batch_dir, batch, seeds=0 if fed else 3)
        fed.extend(batch)
        under_way = clock.completed() + 3
        wait_for(lambda: clock.completed() >= under_way, 60, what="the batch's first LLM completions")
        stored_before.update(checksums(store))
        return time.monotonic()

    def disrupted(name: str, started: float) -> None:
        """Wait for every fed document to end; record the longest time without an LLM completion between
        `started` and the last completion (after it the batch is through: waiting then is no stall)."""
        wait_for(lambda: set(endings(kafka_pipeline)) == expected_ids(fed), 120,
                 what=lambda: f"every document fed before the {name} to end: {len(endings(kafka_pipeline))}/{len(fed)}")
        done = time.monotonic()
        stalls[name] = (clock.longest_gap(started, clock.last_completion(started, done)), done - started)
        print(f"{name}: longest stall {stalls[name][0]:.1f}s, all fed documents ended {stalls[name][1]:.1f}s after")

    # The README's multi-process shape: every stage in one worker, a second sharing the LLM and embed
    # stages' partitions (dedup has one writer per data dir).
    shared = [arg for stage in ("attribution", "situation", "instruction", "judge", "embed", "answer")
              for arg in ("--stage", stage)]
    workers = [kafka_pipeline.start("run", "--no-progress"), kafka_pipeline.start("run", *shared, "--no-progress")]
    try:
        wait_for(lambda: all("assigned partitions" in kafka_pipeline.log_of(w) for w in workers), 90,
                 what="both workers to join")

        started = feed_batch()
        leader = asyncio.run(kafka_cluster.partition_leader(embedded))
        leader.kill()
        disrupted(f"SIGKILL of node {leader.node_id}, leader of instructions.embedded", started)
        kafka_cluster.restart(leader)
        asyncio.run(kafka_cluster.wait_in_sync())

        started = feed_batch()
        controller = kafka_cluster.active_controller()
        controller.kill()
        disrupted(f"SIGKILL of node {controller.node_id}, the active controller", started)
        kafka_cluster.restart(controller)
        asyncio.run(kafka_cluster.wait_in_sync())

        # One at a time, each back in sync before the next goes, each with documents of its own in the
        # chain when it stops (a bounce takes longer than a few documents do).
        for node in kafka_cluster.nodes:
            started = feed_batch(BATCH // len(kafka_cluster.nodes))
            node.stop()
            kafka_cluster.restart(node)
            asyncio.run(kafka_cluster.wait_in_sync())
            disrupted(f"rolling restart: node {node.node_id} stopped and started", started)

        for worker in workers:
            assert worker.poll() is None, kafka_pipeline.log_of(worker)[-3000:]
        ended = endings(kafka_pipeline)
        assert set(ended) == expected_ids(texts) and set(ended.values()) == {1}, ended
        after = checksums(store)
        changed = [p.name for p, digest in stored_before.items() if after.get(p) != digest]
        assert not changed, changed
        for worker in workers:
            assert stop_process(worker) == 0, kafka_pipeline.log_of(worker)[-3000:]

        # The export is the one tansu makes of the same input: the same sample ids, each with the same
        # conversation (the simulator answers a request by its content, as a model with a fixed seed).
        exported = exported_samples(kafka_pipeline, tmp_path / "kafka.jsonl")
        reference = on_tansu.result()
        assert len(exported) == len(texts) - sum(1 for env in envelopes(kafka_pipeline, "rejected")
                                                 if env["data"]["stage"] == "dedup")
        assert set(exported) == set(reference), (len(exported), len(reference))
        assert exported == reference
    finally:
        clock.close()
        for node in kafka_cluster.nodes:  # the cluster is the session's: whole again for the next test
            if not node.running():
                kafka_cluster.restart(node)
    print(f"{len(texts)} documents fed, {sum(ended.values())} ended, 0 duplicates, {len(stored_before)} stored files "
          f"unchanged, {len(exported)} exported samples with the ids and conversations of the tansu run")


# Each document shown every seed fed (3) as its examples, not those attributed by the time it is
# read, so what the simulator is asked (and so answers) does not depend on timing.
SAME_EXAMPLES = {"SYNTHSTREAM_STAGES__SITUATION__MIN_EXAMPLES": "3"}


class ReferenceRun:
    """The documents (and the failure test's 3 seeds) through the whole chain on the embedded broker,
    in a thread: feed, then `run --until-idle`."""

    def __init__(self, broker, texts: list[str], llm_url: str, workdir: Path) -> None:
        from conftest import new_pipeline

        workdir.mkdir()
        self.pipeline = new_pipeline(broker, workdir)
        self.pipeline.env.update({"SYNTHSTREAM_LLM__BASE_URL": llm_url, **SAME_EXAMPLES})
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(texts, workdir), daemon=True)
        self._thread.start()

    def _run(self, texts: list[str], workdir: Path) -> None:
        try:
            self.pipeline.feed(workdir, texts, seeds=3)
            self.pipeline.cli("run", "--until-idle", "--no-progress", timeout=240)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread by result()
            self.error = exc

    def result(self) -> dict[str, list]:
        self._thread.join(300)
        if self.error is not None:
            raise self.error
        return exported_samples(self.pipeline, self.pipeline.workdir / "tansu.jsonl")


def exported_samples(pipeline, out: Path) -> dict[str, list]:
    """`synthstream export`'s rows: sample id -> the conversation."""
    pipeline.cli("export", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {row["id"]: row["messages"] for row in rows}

