"""Pipeline throughput: does one machine keep the LLM endpoint busy, and at what CPU cost?

Everything runs on this machine, in one bench run: an embedded broker, the LLM simulator (its own
process, standing in for the remote endpoint) and synthstream's real CLI processes.

(1) End to end: `--docs` generated documents and `--seeds` seed instructions are fed with
    `synthstream feed`, then `synthstream run --until-idle` runs the whole SynthQuestions pipeline
    (attribution, situation, instruction, judge, embed, dedup, answer, sink) with concurrency
    `--concurrency` per LLM stage. Against a fresh simulator of the same latency, a plain asyncio
    client (aiohttp, written here) makes the same calls: the seeds' calls, then per document the
    same four calls in turn (situation, instruction, judge, answer), each step holding its own
    semaphore of `--concurrency`, with the stages' own JSON schemas. Printed:
      first request -> last completion   synthstream and plain (from the simulators' clocks)
      ratio synthstream / plain          target <= 1.25
      peak concurrent requests the simulator saw
(2) Cost: CPU seconds of every synthstream process (run, feed, broker) per document, peak RSS per
    process, documents/s, and the encoder's share of the run's CPU.
                                         targets: <= 50 ms CPU per document (all processes), the run
                                         process alone <= 10 ms per document, run RSS <= 400 MB
(3) Latency: the run's launch -> first request and last completion -> exit, and the slot-refill
    p50 at the concurrency limit (from the run's metrics endpoint). Then the answer stage's group
    is rewound (`replay answer --from-beginning`) and the stage run by itself (`run --stage answer
    --until-idle`, response cache off) against the still running broker: launch -> first request <= 2 s, last completion -> exit <= 1 s,
    its peak RSS <= 150 MB (an LLM-only process). Last, the embed stage is rewound and run alone: the
    peak RSS of a process that loaded the encoder and encoded every instruction <= 250 MB.

    python bench/pipeline.py                                  # 600 documents, 1.0 s latency
(4) With --kafka, the same chain (same documents, a fresh simulator) on a 3-node Apache Kafka cluster
    (streamer.kafka.apache: replication 3, min.insync.replicas 2) in the same bench run: its span
    and ratio to the plain client (target <= 1.1), launch -> first request (<= 3 s) and last
    completion -> exit of `run --until-idle` (<= 1 s).

    python bench/pipeline.py --docs 5000 --latency 0.02       # CPU per document at volume
    python bench/pipeline.py --kafka                          # tansu, Kafka and the plain client
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from consumers.attribution import AttributionOutput  # noqa: E402
from consumers.instruction import InstructionOutput  # noqa: E402
from consumers.rubric import RubricScores  # noqa: E402
from consumers.situation import SituationOutput  # noqa: E402
from streamer.kafka.apache import KafkaCluster  # noqa: E402
from streamer.kafka.broker import EmbeddedBroker  # noqa: E402
from streamer.processes import free_port, port_open  # noqa: E402

CLI = [sys.executable, "-m", "streamer.cli"]
SCRAPE_INTERVAL = 2.0  # seconds between scrapes of the run's metrics (the in-flight timeline)
LLM_STAGES = ("attribution", "situation", "instruction", "judge", "answer")
PER_DOCUMENT = (SituationOutput, InstructionOutput, RubricScores, None)  # None: the answer, plain text
TARGETS = {"ratio": 1.25, "cpu_ms_per_doc": 50, "run_cpu_ms_per_doc": 10, "run_rss_mb": 400, "stage_rss_mb": 150,
           "encoder_rss_mb": 250, "start_s": 2.0, "stop_s": 1.0, "refill_p50_ms": 10,
           "kafka_ratio": 1.1, "kafka_start_s": 3.0}

WORDS = ("kernel scheduler memory page cache file system socket buffer thread process signal "
         "package dependency install version build compile link library module function class "
         "method argument return value error exception log trace config option default network "
         "request response header body server client proxy route table index query column row "
         "backup restore snapshot volume disk partition mount user group permission owner").split()


def documents(n: int, rng: random.Random) -> list[str]:
    """Manual-like pages of 1,000-2,500 characters: a title line, then paragraphs."""
    docs = []
    for i in range(n):
        title = f"{' '.join(rng.sample(WORDS, 3)).title()} ({i})"
        paragraphs = []
        while sum(map(len, paragraphs)) < rng.randint(1000, 2500):
            words = [rng.choice(WORDS) for _ in range(rng.randint(30, 70))]
            paragraphs.append(" ".join(words).capitalize() + ".")
        docs.append(title + "\n\n" + "\n\n".join(paragraphs))
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Processes ----------------------------------------------------------------------------------------

class Simulator:
    def __init__(self, latency: float, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        log = open(workdir / f"simulator-{self.port}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([*CLI, "simulate-llm", "--port", str(self.port), "--latency", str(latency)],
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"simulator did not start; see {log.name}")
            time.sleep(0.05)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url.replace("/v1", "/stats"), timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def run_to_exit(args: list[str], env: dict[str, str], log_path: Path, metrics_port: int | None = None) -> dict:
    """Start a CLI process, scrape its metrics while it runs, and return its times and rusage."""
    launched = time.time()
    scraped, timeline, next_scrape = "", [], launched
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if metrics_port is not None and time.time() >= next_scrape:
                scraped = scrape(metrics_port) or scraped
                in_flight = re.findall(r'synthstream_stage_in_flight\{stage="([^"]+)"\} (\S+)', scraped)
                timeline.append(f"{time.time() - launched:6.1f}s " + " ".join(
                    f"{stage}={float(n):.0f}" for stage, n in in_flight if float(n)))
                # Every 2 s: a scrape costs the run ~4 ms CPU (600 series), and the bench measures that CPU.
                next_scrape = time.time() + SCRAPE_INTERVAL
            time.sleep(0.01)  # exit time to within 10 ms
    exited = time.time()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"synthstream {' '.join(args)} exited {code}; see {log_path}")
    return {"launched": launched, "exited": exited, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "metrics": scraped, "log": log_path.read_text(errors="replace"),
            "timeline": timeline}


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def refill_p50_ms(metrics_text: str) -> float | None:
    """The upper bound of the histogram bucket holding the median, over every stage."""
    buckets: dict[float, float] = {}
    for le, value in re.findall(r'synthstream_stage_slot_refill_seconds_bucket\{le="([^"]+)",stage="[^"]+"\} (\S+)',
                                metrics_text):
        buckets[float(le)] = buckets.get(float(le), 0.0) + float(value)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    return next(le * 1000 for le in sorted(buckets) if buckets[le] >= total / 2)


# (1) the plain client --------------------------------------------------------------------------

async def plain_client(url: str, docs: list[str], seeds: list[str], concurrency: int) -> dict:
    """Per document the same four calls in turn, each step with its own semaphore; seeds first."""
    schemas = {model: model.model_json_schema() for model in (AttributionOutput, *PER_DOCUMENT) if model}
    steps = [asyncio.Semaphore(concurrency) for _ in range(len(PER_DOCUMENT) + 1)]

    async def call(session: aiohttp.ClientSession, step: int, model: type | None, text: str) -> str:
        body = {"model": "synthstream-simulator", "max_tokens": 1024,
                "messages": [{"role": "system", "content": "Reply with JSON only."}, {"role": "user", "content": text}]}
        if model is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": model.__name__, "schema": schemas[model]}}
        async with steps[step], session.post(url + "/chat/completions", json=body) as resp:
            resp.raise_for_status()
            reply = await resp.json()
        return reply["choices"][0]["message"]["content"]

    async def document(session: aiohttp.ClientSession, text: str) -> None:
        for step, model in enumerate(PER_DOCUMENT, start=1):
            text = text[:2000] + "\n" + await call(session, step, model, text)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(call(session, 0, AttributionOutput, s) for s in seeds))
        await asyncio.gather(*(document(session, d) for d in docs))
    return {"calls": len(seeds) + len(docs) * len(PER_DOCUMENT)}


# The bench ---------------------------------------------------------------------------------------

def pipeline_env(broker: EmbeddedBroker | KafkaCluster, sim: Simulator, data_dir: Path, concurrency: int,
                 overrides: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env.update({
        "SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "SYNTHSTREAM_KAFKA__TOPIC_PREFIX": "bench.",
        "SYNTHSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "SYNTHSTREAM_LLM__BASE_URL": sim.url,
        "SYNTHSTREAM_LLM__MODEL": "synthstream-simulator",
        # Every document gets all four calls, as in the plain client: nothing is judged or deduplicated away.
        "SYNTHSTREAM_STAGES__JUDGE__THRESHOLD": "0",
        "SYNTHSTREAM_STAGES__DEDUP__THRESHOLD": "1.0",
    })
    for stage in LLM_STAGES:
        env[f"SYNTHSTREAM_STAGES__{stage.upper()}__CONCURRENCY"] = str(concurrency)
    for setting in overrides:
        key, _, value = setting.partition("=")
        env["SYNTHSTREAM_" + key.upper().replace(".", "__")] = value
    return env


def feed(env: dict[str, str], workdir: Path, docs: list[str], seeds: list[str]) -> float:
    cpu = 0.0
    for kind, rows in (("seeds", [{"instruction": s} for s in seeds]), ("docs", [{"text": d} for d in docs])):
        path = write_jsonl(workdir / f"{kind}.jsonl", rows)
        cpu += run_to_exit(["feed", kind, str(path)], env, workdir / f"feed-{kind}.log")["cpu"]
    return cpu


def seed_texts(n: int, rng: random.Random) -> list[str]:
    asks = ("How do I {} the {} when the {} fails?", "Explain why my {} keeps losing its {} after a {}.",
            "Write a short guide to {} a {} for a {}.", "What is the difference between a {} and a {} in {}?")
    return [rng.choice(asks).format(*rng.sample(WORDS, 3)) for _ in range(n)]


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    rng = random.Random(7)
    docs, seeds = documents(args.docs, rng), seed_texts(args.seeds, rng)
    broker = EmbeddedBroker()
    broker.start()
    out: dict = {}
    try:
        sim = Simulator(args.latency, workdir)
        env = pipeline_env(broker, sim, workdir / "data", args.concurrency, args.set)
        broker_cpu = proc_cpu_seconds(broker.process.pid)
        feed_cpu = feed(env, workdir, docs, seeds)
        metrics_port = free_port()
        print(f"running the pipeline on {args.docs} documents ...", flush=True)
        run = run_to_exit([*args.run_args, "run", "--until-idle", "--no-progress", "--metrics-port", str(metrics_port)], env,
                          workdir / "run.log", metrics_port)
        out["broker_cpu"] = proc_cpu_seconds(broker.process.pid) - broker_cpu
        out["feed_cpu"], out["run"], out["sim"] = feed_cpu, run, sim.stats()
        (workdir / "run-metrics.txt").write_text(run["metrics"])  # the last scrape, for a closer look
        (workdir / "run-in-flight.txt").write_text("\n".join(run["timeline"]) + "\n")  # records in flight per stage
        sim.stop()
        if not args.skip_stage:
            out["stage"] = answer_stage_alone(args, broker, env, workdir)
            out["embed"] = embed_stage_alone(env, workdir)
        out["broker_rss_mb"] = proc_peak_rss_mb(broker.process.pid)
    finally:
        broker.stop()
    if args.kafka:
        out["kafka"] = chain_on_kafka(args, workdir, docs, seeds)
    if not args.skip_plain:
        plain_sim = Simulator(args.latency, workdir)
        print("running the plain client ...", flush=True)
        asyncio.run(plain_client(plain_sim.url, docs, seeds, args.concurrency))
        out["plain_sim"] = plain_sim.stats()
        plain_sim.stop()
    return out


def chain_on_kafka(args: argparse.Namespace, workdir: Path, docs: list[str], seeds: list[str]) -> dict:
    """The same feed and `run --until-idle` on a 3-node Apache Kafka cluster, with a fresh simulator."""
    print("starting a 3-node Kafka cluster ...", flush=True)
    cluster = KafkaCluster(workdir / "kafka", 3)
    cluster.start()
    try:
        sim = Simulator(args.latency, workdir)
        env = pipeline_env(cluster, sim, workdir / "kafka-data", args.concurrency, args.set)
        # Kafka refuses sessions under group.min.session.timeout.ms (6 s); topics get the cluster's
        # default.replication.factor (3).
        env.update({"SYNTHSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000", "SYNTHSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"})
        feed(env, workdir, docs, seeds)
        print(f"running the pipeline on {args.docs} documents on Kafka ...", flush=True)
        run = run_to_exit([*args.run_args, "run", "--until-idle", "--no-progress"], env, workdir / "kafka-run.log")
        result = {"run": run, "sim": sim.stats()}
        sim.stop()
        return result
    finally:
        cluster.stop()


def answer_stage_alone(args: argparse.Namespace, broker: EmbeddedBroker, env: dict[str, str], workdir: Path) -> dict:
    """The answer stage's group rewound, and the stage run alone against the running broker
    (response cache off, so every record is asked again)."""
    subprocess.run([*CLI, "replay", "answer", "--from-beginning"], env=env, check=True, capture_output=True)
    sim = Simulator(args.latency, workdir)
    stage_env = {**env, "SYNTHSTREAM_LLM__BASE_URL": sim.url, "SYNTHSTREAM_LLM__CACHE": "false"}
    print("running the answer stage alone ...", flush=True)
    result = run_to_exit(["run", "--stage", "answer", "--until-idle", "--no-progress"], stage_env,
                         workdir / "answer.log")
    result["sim"] = sim.stats()
    sim.stop()
    return result


def embed_stage_alone(env: dict[str, str], workdir: Path) -> dict:
    """The embed stage's group rewound and the stage run alone: the peak RSS of a process that has
    loaded the encoder and encoded every instruction (its outputs keep their ids, so nothing doubles)."""
    subprocess.run([*CLI, "replay", "embed", "--from-beginning"], env=env, check=True, capture_output=True)
    print("running the embed stage alone ...", flush=True)
    return run_to_exit(["run", "--stage", "embed", "--until-idle", "--no-progress"], env, workdir / "embed.log")


def report(args: argparse.Namespace, m: dict) -> None:
    run, sim = m["run"], m["sim"]
    span = sim["last_completion_at"] - sim["first_request_at"]
    print(f"\nbench/pipeline.py: {args.docs} documents, {args.seeds} seeds, simulator latency {args.latency}s, "
          f"concurrency {args.concurrency} per LLM stage, {os.cpu_count()} cores")
    print(f"(1) synthstream: first request -> last completion {span:.1f}s, {sim['completed']} requests "
          f"({sim['completed'] / args.docs:.2f} per document), {sim['request_seconds'] / span:.0f} concurrent "
          f"on average, {sim['peak_in_flight']} at most")
    if "plain_sim" in m:
        plain = m["plain_sim"]
        plain_span = plain["last_completion_at"] - plain["first_request_at"]
        print(f"    plain asyncio: first request -> last completion {plain_span:.1f}s, {plain['completed']} requests, "
              f"{plain['request_seconds'] / plain_span:.0f} concurrent on average, {plain['peak_in_flight']} at most")
        verdict(f"    ratio synthstream / plain = {span / plain_span:.2f}", span / plain_span <= TARGETS["ratio"],
                f"<= {TARGETS['ratio']}")
    cpu = run["cpu"] + m["feed_cpu"] + m["broker_cpu"]
    per_doc = cpu * 1000 / args.docs
    wall = run["exited"] - run["launched"]
    print(f"(2) CPU: run {run['cpu']:.1f}s, feed {m['feed_cpu']:.1f}s, broker {m['broker_cpu']:.1f}s "
          f"= {cpu:.1f}s for {args.docs} documents")
    verdict(f"    {per_doc:.1f} ms CPU per document", per_doc <= TARGETS["cpu_ms_per_doc"],
            f"<= {TARGETS['cpu_ms_per_doc']}")
    verdict(f"    run alone: {run['cpu'] * 1000 / args.docs:.1f} ms CPU per document",
            run["cpu"] * 1000 / args.docs <= TARGETS["run_cpu_ms_per_doc"], f"<= {TARGETS['run_cpu_ms_per_doc']}")
    if enc := re.search(r"encoder (\S+): (\d+) texts in (\d+) calls, ([\d.]+)s CPU", run["log"]):
        print(f"    encoder: {enc.group(2)} texts in {enc.group(3)} calls, {enc.group(4)}s CPU "
              f"= {float(enc.group(4)) / max(run['cpu'], 1e-9):.0%} of the run's CPU")
    print(f"    {args.docs / wall:.1f} documents/s from launch to exit ({wall:.1f}s)")
    verdict(f"    peak RSS: run {run['rss_mb']:.0f} MB", run["rss_mb"] <= TARGETS["run_rss_mb"],
            f"<= {TARGETS['run_rss_mb']} MB")
    print(f"    peak RSS: broker {m['broker_rss_mb']:.0f} MB")
    start, stop = sim["first_request_at"] - run["launched"], run["exited"] - sim["last_completion_at"]
    print(f"(3) pipeline: launch -> first request {start:.2f}s, last completion -> exit {stop:.2f}s")
    refill = refill_p50_ms(run["metrics"])
    if refill is not None:
        verdict(f"    slot refill at the concurrency limit: p50 <= {refill:g} ms", refill <= TARGETS["refill_p50_ms"],
                f"<= {TARGETS['refill_p50_ms']} ms")
    else:
        print("    slot refill: no stage reached its concurrency limit")
    if kafka := m.get("kafka"):
        krun, ksim = kafka["run"], kafka["sim"]
        kspan = ksim["last_completion_at"] - ksim["first_request_at"]
        print(f"(4) on 3 Kafka brokers: first request -> last completion {kspan:.1f}s, {ksim['completed']} requests "
              f"(tansu: {span:.1f}s, ratio Kafka / tansu {kspan / span:.2f})")
        if "plain_sim" in m:
            verdict(f"    ratio Kafka / plain = {kspan / plain_span:.2f}", kspan / plain_span <= TARGETS["kafka_ratio"],
                    f"<= {TARGETS['kafka_ratio']}")
        kstart = ksim["first_request_at"] - krun["launched"]
        verdict(f"    launch -> first request {kstart:.2f}s", kstart <= TARGETS["kafka_start_s"],
                f"<= {TARGETS['kafka_start_s']} s")
        kstop = krun["exited"] - ksim["last_completion_at"]
        verdict(f"    --until-idle: last completion -> exit {kstop:.2f}s", kstop <= TARGETS["stop_s"],
                f"<= {TARGETS['stop_s']} s")
    if stage := m.get("stage"):
        ssim = stage["sim"]
        verdict(f"    answer stage alone: launch -> first request {ssim['first_request_at'] - stage['launched']:.2f}s",
                ssim["first_request_at"] - stage["launched"] <= TARGETS["start_s"], f"<= {TARGETS['start_s']} s")
        verdict(f"    answer stage alone: last completion -> exit {stage['exited'] - ssim['last_completion_at']:.2f}s",
                stage["exited"] - ssim["last_completion_at"] <= TARGETS["stop_s"], f"<= {TARGETS['stop_s']} s")
        verdict(f"    answer stage alone: peak RSS {stage['rss_mb']:.0f} MB ({ssim['completed']} requests)",
                stage["rss_mb"] <= TARGETS["stage_rss_mb"], f"<= {TARGETS['stage_rss_mb']} MB")
    if embed := m.get("embed"):
        texts = re.search(r"encoder \S+: (\d+) texts", embed["log"])
        verdict(f"    embed stage alone (the encoder loaded, {texts.group(1) if texts else '?'} texts): "
                f"peak RSS {embed['rss_mb']:.0f} MB", embed["rss_mb"] <= TARGETS["encoder_rss_mb"],
                f"<= {TARGETS['encoder_rss_mb']} MB")


def verdict(line: str, ok: bool, target: str) -> None:
    print(f"{line}   (target {target})  {'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--latency", type=float, default=1.0, help="simulator seconds per request")
    parser.add_argument("--concurrency", type=int, default=64, help="records in flight per LLM stage")
    parser.add_argument("--skip-plain", action="store_true", help="no plain-client comparison")
    parser.add_argument("--skip-stage", action="store_true", help="no answer-stage-alone run")
    parser.add_argument("--kafka", action="store_true", help="also run the chain on a 3-node Apache Kafka cluster")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, store)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the synthstream processes, e.g. stages.situation.demo_selection=random")
    parser.add_argument("--run-args", nargs="*", default=[], metavar="ARG",
                        help="global synthstream options for the pipeline run, e.g. --log-level DEBUG")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="synthstream-bench-"))
    m = measure(args, workdir)
    report(args, m)
    if args.keep:
        print(f"work directory kept: {workdir}")
        for name in ("run", "stage", "embed"):
            if name in m:
                print(f"  {name} launched at {time.strftime('%H:%M:%S', time.localtime(m[name]['launched']))}"
                      f".{int(m[name]['launched'] % 1 * 1000):03d}")
    else:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
