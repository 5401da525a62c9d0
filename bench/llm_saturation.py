"""LLM saturation: does the client keep a rate-limited endpoint busy without drowning in 429s?

Starts the simulator (1 s latency, 600 requests/min enforced as a token bucket) in its own
process, drives it through synthstream's LLM client configured for the same limit with many
concurrent callers, and prints, for the period after warm-up:
  achieved/limit  = completed requests per second ÷ (rpm/60)      target ≥ 0.95
  429 share       = 429 answers ÷ all answers                      target < 1%

    python bench/llm_saturation.py [--seconds 70] [--warmup 10] [--rpm 600] [--latency 1] [--callers 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer import metrics  # noqa: E402
from streamer.config import LLMSettings  # noqa: E402
from streamer.processes import free_port, port_open  # noqa: E402
from streamer.llm.client import LLMPool  # noqa: E402


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.replace("/v1", "/stats"), timeout=5) as resp:
        return json.load(resp)


async def drive(base_url: str, args: argparse.Namespace) -> dict:
    settings = LLMSettings(base_url=base_url, model="synthstream-simulator", requests_per_minute=args.rpm,
                           max_in_flight=args.callers, max_retries=20, cache=False, max_tokens=64)
    pool = LLMPool(cache=None)
    client = pool.client(settings, "bench")
    completions: list[float] = []
    start = time.monotonic()
    end = start + args.seconds
    marks: dict[str, float] = {}

    async def caller(n: int) -> None:
        i = 0
        while time.monotonic() < end:
            i += 1
            await client.complete([{"role": "user", "content": f"caller {n} request {i}: say something"}])
            completions.append(time.monotonic() - start)

    async def mark_warmup() -> None:
        await asyncio.sleep(args.warmup)
        marks["rate_limited"] = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="rate_limited")
        marks["ok"] = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="ok")
        marks["errors"] = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="error")

    await asyncio.gather(mark_warmup(), *(caller(n) for n in range(args.callers)))
    await pool.close()
    window_end = args.seconds
    done_in_window = sum(1 for t in completions if args.warmup <= t < window_end)
    limited = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="rate_limited") - marks["rate_limited"]
    ok = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="ok") - marks["ok"]
    errors = metrics.total(metrics.LLM_REQUESTS, stage="bench", outcome="error") - marks["errors"]
    return {"done_in_window": done_in_window, "window": window_end - args.warmup, "limited": limited,
            "answers": ok + limited + errors, "total_done": len(completions)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=70)
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--callers", type=int, default=40)
    args = ap.parse_args()

    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "streamer.cli", "simulate-llm", "--port", str(port),
                            "--latency", str(args.latency), "--rpm", str(args.rpm)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or sim.poll() is not None:
                print("simulator did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        base_url = f"http://127.0.0.1:{port}/v1"
        r = asyncio.run(drive(base_url, args))
        server = stats(base_url)
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    limit = args.rpm / 60
    achieved = r["done_in_window"] / r["window"]
    ratio = achieved / limit
    share = r["limited"] / r["answers"] if r["answers"] else 0.0
    print(f"simulator: latency {args.latency}s, limit {args.rpm} req/min ({limit:.1f}/s); "
          f"{args.callers} concurrent callers, {args.seconds:.0f}s run, first {args.warmup:.0f}s = warm-up")
    print(f"after warm-up: {r['done_in_window']} completed in {r['window']:.0f}s = {achieved:.2f} req/s")
    print(f"achieved/limit = {ratio:.3f}   (target >= 0.95)")
    print(f"429 share      = {share:.2%} ({r['limited']:.0f} of {r['answers']:.0f} answers)   (target < 1%)")
    print(f"simulator counters (whole run): {server}")
    ok = ratio >= 0.95 and share < 0.01
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
