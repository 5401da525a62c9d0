"""OpenAI-compatible LLM simulator: a real HTTP server for tests, benchmarks and the offline demo.

It answers `/v1/chat/completions` like a hosted model would, including the parts a client has
to cope with: a requests/min token bucket answered with 429 + Retry-After, injected 500s,
malformed JSON, and truncation at `max_tokens`. Content is built from the prompt's own words
and is deterministic per request, so caches and re-runs behave as they would against a real
model called with a fixed seed. Structured output (`response_format=json_schema`) is filled
from the JSON schema pydantic emits, so a well-formed answer always validates.

- `server`: the aiohttp app, routes, request parsing, responses, counters, serving;
- `faults`: rate limiting, injected errors, broken or schema-breaking JSON, truncation;
- `schema_fill`: a value for a JSON schema; `words`: the prompt's words answers are made of;
- `settings`: SimulatorSettings and SimulatorStats;
- `batches` (behaviour in `batch_settings`): the batch API (files, batches, output and error files) and
  the ledger of what was charged online and batch (`GET /ledger`).

Production code does not import this package; the mark of a simulated answer lives in
`streamer.llm.fingerprint`, the token bucket in `streamer.llm.limits`.
"""

from streamer.llm.fingerprint import SIMULATOR_FINGERPRINT
from streamer.llm.simulator.schema_fill import fill_schema
from streamer.llm.simulator.server import (
    STATS_KEY,
    create_app,
    run_simulator,
    simulated_endpoint,
    start_simulator,
)
from streamer.llm.simulator.settings import SIMULATOR_MODEL, SimulatorSettings, SimulatorStats
from streamer.llm.simulator.words import prompt_words

__all__ = [
    "SIMULATOR_FINGERPRINT",
    "SIMULATOR_MODEL",
    "STATS_KEY",
    "SimulatorSettings",
    "SimulatorStats",
    "create_app",
    "fill_schema",
    "prompt_words",
    "run_simulator",
    "simulated_endpoint",
    "start_simulator",
]
