"""How JSON output is asked of a server: the dialects real OpenAI-compatible servers speak, from
the richest down, and the one chosen per endpoint and model for the process.

- `json_schema`: response_format json_schema (OpenAI, vLLM, SGLang); the prompt is left alone;
- `json_object_schema`: response_format json_object with a `schema` key (llama-cpp-python);
- `json_object`: response_format json_object, the schema only in the prompt;
- `prompt`: no response_format at all (servers that refuse or ignore it).

Every rung below `json_schema` also writes the schema into the prompt: a server that ignores the
response_format still gets told, and a model under a grammar writes better JSON knowing the fields.
With `structured = "auto"` the client starts at the top and steps down when the server refuses the
format (an error naming response_format) or ignores it (a reply with no JSON object in it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

LADDER = ("json_schema", "json_object_schema", "json_object", "prompt")

# Schema limits above these are left to validation after parsing: grammar-constrained servers turn
# each allowed character or item into rules, and llama.cpp gives up (or crashes) on maxLength 2000.
GRAMMAR_MAX_LENGTH = 200
GRAMMAR_MAX_ITEMS = 20

_NAMES_FORMAT = re.compile(r"response_format|json_schema|json_object", re.IGNORECASE)


def names_response_format(message: str) -> bool:
    """Whether a server's error is about the requested output format (not about the prompt)."""
    return bool(_NAMES_FORMAT.search(message))


def grammar_friendly(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without the large length and item limits a grammar cannot hold."""
    friendly = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, limit in (("maxLength", GRAMMAR_MAX_LENGTH), ("minLength", GRAMMAR_MAX_LENGTH),
                               ("maxItems", GRAMMAR_MAX_ITEMS), ("minItems", GRAMMAR_MAX_ITEMS)):
                if isinstance(node.get(key), int) and node[key] > limit:
                    del node[key]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(friendly)
    return friendly


def schema_instruction(schema: dict[str, Any]) -> str:
    return ("Reply with only a JSON object that matches this JSON schema (no prose, no code fence):\n"
            + json.dumps(schema, separators=(",", ":")))


def request_for(dialect: str, messages: list[dict[str, str]], name: str, schema: dict[str, Any]
                ) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages and the extra request fields that ask for `schema` in `dialect`."""
    if dialect == "json_schema":
        return messages, {"response_format": {"type": "json_schema",
                                              "json_schema": {"name": name, "schema": schema, "strict": False}}}
    # In the last user message: chat templates may drop the system message.
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    told = list(messages)
    if last_user is None:
        told.append({"role": "user", "content": schema_instruction(schema)})
    else:
        told[last_user] = {**told[last_user], "content": f"{told[last_user]['content']}\n\n{schema_instruction(schema)}"}
    if dialect == "json_object_schema":
        return told, {"response_format": {"type": "json_object", "schema": schema}}
    if dialect == "json_object":
        return told, {"response_format": {"type": "json_object"}}
    return told, {}


class DialectChoice:
    """The dialect used with one endpoint and model: fixed by the settings, or (auto) found by
    stepping down the ladder and then kept for the process."""

    def __init__(self, setting: str, where: str) -> None:
        self.auto = setting == "auto"
        self.rung = 0 if self.auto else LADDER.index(setting)
        self.settled = not self.auto
        self.where = where
        self.finding = asyncio.Lock()  # held by the one request asking while auto has not settled

    @property
    def current(self) -> str:
        return LADDER[self.rung]

    def can_step_down(self) -> bool:
        return self.auto and not self.settled and self.rung + 1 < len(LADDER)

    def step_down(self, tried: str, why: str) -> bool:
        """Move below `tried` (once, however many requests saw it fail together); False if there
        is nothing left to try."""
        if self.current != tried:
            return True  # another request has already stepped down
        if not self.can_step_down():
            return False
        self.rung += 1
        log.info("%s: %s not usable (%s); trying %s", self.where, tried, why[:200], self.current)
        return True

    def settle(self, dialect: str) -> None:
        if not self.settled and dialect == self.current:
            self.settled = True
            log.info("%s: structured output dialect %s", self.where, dialect)
