"""How the simulator's batch API behaves (apart from settings.py so that both can import it)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BatchBehaviour(BaseModel):
    """The batch API's timing and faults; changeable while serving (POST /batch-behaviour), so a test
    can make the next batch expire or fail after the client has started."""

    completion_seconds: float = Field(2.0, ge=0, description="seconds from a batch's creation to its completion "
                                      "(validating ~5%, in progress, finalizing ~5%)")
    failure_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered with an error (error "
                                "file, status 500), drawn per batch and custom_id")
    expire_next: int = Field(0, ge=0, description="this many of the next batches created expire")
    expire_keep: float = Field(0.5, ge=0, le=1, description="share of an expiring batch's requests finished "
                               "before it expires (kept in its output file)")
    max_requests: int = Field(50_000, ge=1, description="most requests in one input file (OpenAI's limit)")
    max_bytes: int = Field(200 * 1024 * 1024, ge=1, description="largest input file (OpenAI's limit)")
    seed: int = Field(0, description="seeds the per-request failure draws")
