"""What an LLM call returns or raises: the vocabulary stages and the runtime share with the
client, apart from it so that using them does not import the OpenAI client library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LLMError(Exception):
    """Base of the errors this client raises; the message is safe to log and to put in dlq."""


class LLMUnavailableError(LLMError):
    """The endpoint kept failing (429/5xx/timeouts/truncation) through all retries."""


class LLMPermanentError(LLMError):
    """Asking again would get the same answer: the record goes to the dlq at once."""


class LLMRequestError(LLMPermanentError):
    """The endpoint refused the request itself (4xx other than 429): retrying will not help."""


class LLMTruncatedError(LLMPermanentError):
    """The reply was cut at max_tokens even after one ask with the stage's max_tokens_cap room."""


class LLMContextError(LLMPermanentError):
    """The prompt and completion do not fit the model's context window (the server's words); the
    runtime cuts the prompt and asks again before this becomes a dead letter."""

    def __init__(self, message: str, limit: int | None = None, prompt_tokens: int | None = None,
                 max_tokens: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens


class LLMOutputError(LLMError):
    """The model's output failed JSON/schema validation through all re-asks."""


@dataclass
class LLMResult:
    content: str
    model: str
    simulated: bool
    cached: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parsed: Any = None
