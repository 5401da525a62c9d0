"""Where the system message goes: as it is, or merged into the first user message.

Some chat templates drop the system message without a word (Gemma's), others refuse it; the
stage's instructions then never reach the model. `llm.system_role = "user"` merges it into the
first user message; `"auto"` asks once per endpoint and model: a code word given only in the
system message, which the model is asked to repeat. A reply without it (or an error about the
system role) means the system message did not arrive, and every later request merges it. Requests
made while the probe is out go as they are, beside it, and only where it finds the system message
dropped are they sent again, merged: against a server that keeps it the probe delays nothing. The
finding is kept for the process and in the response cache, so later processes on the same data dir
do not ask again.
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
PROBE_TOKENS = 256  # room for a reasoning model to think before it answers
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
    """The system role used with one endpoint and model: fixed by the settings, or (auto) found by
    one probe, however many requests arrive together (`mode` stays None until it has answered)."""

    def __init__(self, setting: str, where: str) -> None:
        self.mode: str | None = None if setting == "auto" else setting
        self.where = where
        self._probe: asyncio.Task[str | None] | None = None

    def probe(self, run: Callable[[], Awaitable[str | None]]) -> Awaitable[str | None]:
        """The probe's finding ("system", "user", or None when the endpoint could not be asked: the
        next request asks again), the probe started by the first request that asks for it."""
        if self._probe is None or (self._probe.done() and self.mode is None):
            self._probe = asyncio.ensure_future(self._run(run))
        return asyncio.shield(self._probe)  # one waiter cancelled must not cancel it for all

    async def _run(self, run: Callable[[], Awaitable[str | None]]) -> str | None:
        found = await run()
        if found is not None:
            self.settle(found)
        return found

    def settle(self, found: str) -> None:
        if self.mode is None:
            self.mode = found
            log.info("%s: system messages %s", self.where,
                     "arrive" if found == "system" else "do not arrive (dropped or refused by the chat "
                     "template): merged into the first user message")

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
