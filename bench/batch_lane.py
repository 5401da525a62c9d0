"""The batch lane at volume: judge and answer in batch mode, a worker SIGKILLed while batches are out.

An embedded broker, the LLM simulator (its own process, batch API on, `--batch-seconds` per batch) and
synthstream's real CLI processes: `--docs` generated documents and `--seeds` seeds are fed, `synthstream
run` starts with `stages.judge.llm.mode` and `stages.answer.llm.mode` = "batch", is SIGKILLed once the
online stages are through and batches are out (`--kill-after` seconds at the latest), and a second
`run --until-idle` finishes the work. Printed (targets in brackets):

  documents ended, and ended more than once                    [all of them, none]
  requests the simulator charged twice (its ledger)            [0]
  cost `status --json` reports vs the ledger x prices          [within 1%]
  batches: by state (unsent: its worker was killed before the provider had it), re-attached after the kill
  wall time of each run, requests per batch

    python bench/batch_lane.py                   # 2000 documents, 10 s batches
    python bench/batch_lane.py --docs 200 --batch-seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import documents, write_jsonl  # noqa: E402
from streamer.config import load_settings  # noqa: E402
from streamer.kafka.broker import EmbeddedBroker  # noqa: E402
from streamer.processes import free_port, port_open  # noqa: E402
from streamer.llm.batch import stored_batches  # noqa: E402
from streamer.llm.prices import Prices  # noqa: E402
from streamer.records import content_id  # noqa: E402
from streamer.storage import store  # noqa: E402

CLI = [sys.executable, "-m", "streamer.cli"]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def batch_rows(env: dict[str, str]) -> list:
    settings = load_settings(env=env)
    return stored_batches(settings.storage.data_dir, settings.kafka.topic_prefix)


def endings(data_dir: Path, prefix: str) -> Counter[str]:
    ended: dict[str, str] = {}
    for topic in ("samples", "rejected", "dlq"):
        for row in store.rows(data_dir / "store", prefix + topic):
            env = json.loads(row["envelope"])
            if (env.get("lineage") or {}).get("document_id"):
                ended[env["id"]] = env["root_id"]
    return Counter(ended.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--batch-seconds", type=float, default=10.0, help="the simulator's time per batch")
    parser.add_argument("--batch-max-requests", type=int, default=500)
    parser.add_argument("--kill-after", type=float, default=600.0, help="SIGKILL at the latest after this")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="batch-lane-bench-"))
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    sim_port = free_port()
    sim_log = open(work / "simulator.log", "wb")  # noqa: SIM115 - closed at the end
    sim = subprocess.Popen([*CLI, "simulate-llm", "--port", str(sim_port), "--batch-seconds",
                            str(args.batch_seconds)], stdout=sim_log, stderr=sim_log)
    base = f"http://127.0.0.1:{sim_port}"
    while not port_open("127.0.0.1", sim_port):
        time.sleep(0.05)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env.update({"SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "SYNTHSTREAM_STORAGE__DATA_DIR": str(work / "data"), "SYNTHSTREAM_LLM__BASE_URL": f"{base}/v1",
                "SYNTHSTREAM_LLM__MODEL": "gpt-4o-mini", "SYNTHSTREAM_STAGES__JUDGE__THRESHOLD": "0",
                "SYNTHSTREAM_STAGES__DEDUP__THRESHOLD": "1.0", "SYNTHSTREAM_STAGES__SITUATION__CONCURRENCY": "64",
                "SYNTHSTREAM_STAGES__INSTRUCTION__CONCURRENCY": "64", "SYNTHSTREAM_FEED__FILTERS__ENABLED": "false"})
    for stage in ("JUDGE", "ANSWER"):
        env.update({f"SYNTHSTREAM_STAGES__{stage}__LLM__MODE": "batch",
                    f"SYNTHSTREAM_STAGES__{stage}__LLM__BATCH_MAX_REQUESTS": str(args.batch_max_requests),
                    f"SYNTHSTREAM_STAGES__{stage}__LLM__BATCH_MAX_AGE": "2",
                    f"SYNTHSTREAM_STAGES__{stage}__LLM__BATCH_POLL_INTERVAL": "1"})
    prefix = load_settings(env=env).kafka.topic_prefix
    rng = random.Random(7)
    texts = documents(args.docs, rng)
    docs = write_jsonl(work / "docs.jsonl", [{"text": t} for t in texts])
    seeds = write_jsonl(work / "seeds.jsonl", [{"instruction": f"How do I {' '.join(rng.sample(texts[i].split(), 6))}?"}
                                               for i in range(args.seeds)])
    procs: list[subprocess.Popen] = []
    try:
        for kind, path in (("seeds", seeds), ("docs", docs)):
            subprocess.run([*CLI, "feed", kind, str(path), "--no-progress"], env=env, check=True,
                           capture_output=True)
        started = time.time()
        first = subprocess.Popen([*CLI, "run", "--no-progress"], env=env, stdout=open(work / "run-1.log", "wb"),
                                 stderr=subprocess.STDOUT)
        procs.append(first)
        online_before, stable_since = -1, time.time()
        while time.time() - started < args.kill_after:
            online = get_json(f"{base}/ledger")["totals"].get("online", {}).get("requests", 0)
            pending = [r for r in batch_rows(env) if r.provider_id and not r.collected]
            if online != online_before:
                online_before, stable_since = online, time.time()
            elif pending and time.time() - stable_since > 3:
                break
            time.sleep(0.5)
        in_flight = [r for r in batch_rows(env) if r.provider_id and not r.collected]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = time.time()
        second = subprocess.run([*CLI, "run", "--until-idle", "--no-progress"], env=env, capture_output=True)
        finished = time.time()
        if second.returncode != 0:
            print(second.stderr.decode()[-3000:])
            return 1

        ended = endings(work / "data", prefix)
        expected = {content_id(t) for t in texts}
        ledger = get_json(f"{base}/ledger")
        charged = Counter((c["lane"], c["key"]) for c in ledger["charges"])
        prices = Prices()
        ledger_usd = sum(prices.cost(c["prompt_tokens"], c["completion_tokens"], c["lane"], c["model"])
                         for c in ledger["charges"])
        status = json.loads(subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True,
                                           check=True).stdout)
        rows = batch_rows(env)
        reattached = {r.local_id for r in in_flight} & {r.local_id for r in rows if r.collected}
        print(f"documents: {args.docs}; ended {len(set(ended) & expected)}, more than once "
              f"{sum(1 for n in ended.values() if n > 1)}, missing {len(expected - set(ended))}   [all, 0, 0]")
        print(f"requests charged twice: {sum(1 for n in charged.values() if n > 1)} of {len(charged)}   [0]")
        reported = status["cost_usd"]["total"]
        print(f"cost: reported ${reported:.4f}, ledger x prices ${ledger_usd:.4f} "
              f"({(reported / ledger_usd - 1) * 100:+.2f}%)   [within 1%]; batch lane ${status['cost_usd']['batch']:.4f}")
        print(f"batches: {len(rows)} ({dict(Counter(r.state for r in rows))}), {len(in_flight)} in flight at the kill, "
              f"{len(reattached)} of them collected after it (re-attached); requests per batch "
              f"{sum(r.requests for r in rows) / max(1, len(rows)):.0f}")
        print(f"wall time: first run {killed_at - started:.1f}s (killed), second run {finished - killed_at:.1f}s")
        ok = (set(ended) == expected and all(n == 1 for n in ended.values()) and max(charged.values()) == 1
              and abs(reported / ledger_usd - 1) <= 0.01)
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
        sim_log.close()
        broker.stop()
        print(f"work directory: {work}")


if __name__ == "__main__":
    sys.exit(main())
