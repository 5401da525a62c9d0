"""What a simulator is told to do (settings) and what it has done (counters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from typing import Literal

from pydantic import BaseModel, Field

from streamer.llm.simulator.batch_settings import BatchBehaviour

SIMULATOR_MODEL = "synthstream-simulator"


def answering_model(requested: str) -> str:
    """The model name the simulator answers with: never a real model's name, so a row made with it
    cannot pass for that model's output; it keeps the requested name to tell configurations apart."""
    if not requested or requested == SIMULATOR_MODEL:
        return SIMULATOR_MODEL
    return f"{SIMULATOR_MODEL}/{requested}"


class SimulatorSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    latency: float = Field(0.0, ge=0, description="seconds of sleep before answering a (non-429) request")
    rpm: int = Field(0, ge=0, description="requests per minute, 0 = unlimited")
    burst_seconds: float = Field(3.0, gt=0, description="bucket capacity in seconds of rpm")
    error_rate: float = Field(0.0, ge=0, le=1, description="probability of a simulated 500")
    malformed_rate: float = Field(0.0, ge=0, le=1, description="probability of broken JSON when JSON was asked")
    invalid_rate: float = Field(0.0, ge=0, le=1, description="probability of valid JSON that breaks the schema")
    keep_requests: int = Field(200, ge=0, description="recent requests served at GET /requests")
    seed: int | None = Field(None, description="seeds fault injection (error/malformed draws)")
    # The dialects of real servers, so every path of the client has a fast test.
    response_format: Literal["json_schema", "json_object_schema", "json_object", "ignored"] = Field(
        "json_schema", description="the richest response_format honoured: json_schema (hosted APIs, vLLM); "
        "json_object_schema (llama-cpp-python: json_schema answered 500, json_object with a schema filled); "
        "json_object (json_schema and a schema key answered 400); ignored (every response_format ignored); "
        "below json_schema a JSON answer follows the schema found in the prompt, as a model would")
    quirks: list[Literal["fence", "prose", "second_object", "control_chars", "smart_quotes", "think",
                         "reasoning_content", "echo", "empty"]] = Field(
        default_factory=list, description="how every answer is dressed, as real models write them")
    answer_tokens: int = Field(0, ge=0, description="tokens every answer takes (a verbose model): cut at a "
                               "smaller max_tokens with finish_reason=length; 0 = the answer's own length")
    context_tokens: int = Field(0, ge=0, description="context window: prompt + max_tokens above it is answered "
                                "400 with a context-length error; 0 = no limit")
    drop_system: bool = Field(False, description="the chat template drops system messages (as Gemma's does)")
    batch: BatchBehaviour = Field(default_factory=BatchBehaviour, description="the batch API (simulator/batches.py)")


@dataclass
class SimulatorStats:
    """Counters of what the simulator answered; `errors` counts 500s and 400s."""

    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    malformed: int = 0
    invalid: int = 0
    truncated: int = 0
    refused_format: int = 0  # response_format answered with an error (the dialect is not spoken)
    context_exceeded: int = 0
    # For benchmarks: how busy the endpoint was kept (wall-clock seconds since the epoch).
    in_flight: int = 0
    peak_in_flight: int = 0
    first_request_at: float | None = None
    last_completion_at: float | None = None
    request_seconds: float = 0.0  # summed over requests: ÷ the busy span = mean concurrency

    def started(self, now: float) -> None:
        self.first_request_at = self.first_request_at or now
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def ended(self, now: float, started: float) -> None:
        self.in_flight -= 1
        self.last_completion_at = now
        self.request_seconds += now - started

    def as_dict(self) -> dict[str, int | float | None]:
        return asdict(self)
