"""Where the system message goes: as it is, or merged into the first user message.

Some chat templates drop the system message without a word (Gemma's), others refuse it; the
stage's instructions then never reach the model. `llm.system_role = "user"` merges it into the
first user message; `"auto"` asks once per endpoint and model: a code word given only in the
system message, which the model is asked to repeat. A reply without it means the system message
did not arrive, and every later request merges it. The finding is kept for the process and in the
response cache, so later processes on the same data dir do not ask again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

CODE_WORD = "TANGERINE-4127"
PROBE = [
    {"role": "system", "content": f"The code word is {CODE_WORD}. When the user asks for the code word, reply "
                                  "with the code word only."},
    {"role": "user", "content": "What is the code word? Reply with the code word only."},
]
_REFUSES_SYSTEM = re.compile(r"system (?:role|message|prompt)|role.{0,40}system|roles must alternate", re.I)


def arrived(reply: str) -> bool:
    """Whether the probe's reply carries the code word (however the model dressed it)."""
    return re.sub(r"[^A-Z0-9]", "", CODE_WORD) in re.sub(r"[^A-Z0-9]", "", reply.upper())


def refuses_system(error: str) -> bool:
    """Whether a server's error is about the system role (a template that raises on it)."""
    return bool(_REFUSES_SYSTEM.search(error))


def merged(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system messages' text put in front of the first user message (or as one, if there is none)."""
    system = [m.get("content") or "" for m in messages if m.get("role") == "system"]
    if not system:
        return messages
    rest = [m for m in messages if m.get("role") != "system"]
    text = "\n\n".join(system)
    for i, message in enumerate(rest):
        if message.get("role") == "user":
            rest[i] = {**message, "content": f"{text}\n\n{message.get('content') or ''}"}
            return rest
    return [{"role": "user", "content": text}, *rest]


class RoleChoice:
    """The system role used with one endpoint and model: fixed by the settings, or (auto) probed
    once, however many requests arrive together."""

    def __init__(self, setting: str, where: str) -> None:
        self.mode: str | None = None if setting == "auto" else setting
        self.where = where
        self._lock = asyncio.Lock()

    async def resolve(self, probe: Callable[[], Awaitable[str | None]]) -> str:
        if self.mode is not None:
            return self.mode
        async with self._lock:
            if self.mode is None:
                found = await probe()
                if found is None:
                    return "system"  # the endpoint did not answer the probe: asked again with the next request
                self.mode = found
                log.info("%s: system messages %s", self.where,
                         "arrive" if found == "system" else "do not arrive (dropped or refused by the chat "
                         "template): merged into the first user message")
        return self.mode
