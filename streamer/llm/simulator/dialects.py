"""How real model servers differ from the ideal one: which `response_format` they speak, the
context window, chat templates that drop the system message, and how models dress their answers
(fences, prose, a second object, raw control characters, reasoning text, empty or echoed replies).

Each is a setting of one simulator (SimulatorSettings), so every path of the client that copes with
them has a fast test over real HTTP.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamer.llm.simulator.settings import SimulatorSettings
from streamer.llm.simulator.words import message_text

# llama-cpp-python's server validates response_format with pydantic and answers 500 with its words.
LLAMA_CPP_REFUSAL = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}]"
)
JSON_OBJECT_REFUSAL = ("Invalid parameter: 'response_format' of type '{kind}' is not supported with this model; "
                       "use 'json_object' without a schema")
THINKING = "<think>\nThe user wants an answer in the requested form. I will write it now.\n</think>\n"
REASONING = "First I read the request, then I decide what the answer must contain."


def refusal(settings: SimulatorSettings, format_type: str) -> tuple[int, str] | None:
    """(status, message) when this server does not speak the requested response_format."""
    spoken = settings.response_format
    if spoken == "json_object_schema" and format_type == "json_schema":
        return 500, LLAMA_CPP_REFUSAL
    if spoken == "json_object" and format_type in ("json_schema", "json_object_schema"):
        return 400, JSON_OBJECT_REFUSAL.format(kind=format_type)
    return None


def what_to_write(settings: SimulatorSettings, format_type: str, schema: dict[str, Any] | None,
                  messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The kind of answer the model writes ("json_schema", "json_object" or "text") and the
    schema it follows: the requested one where the server enforces it, else one the prompt shows."""
    if settings.response_format == "ignored":
        format_type, schema = "text", None
    if format_type == "json_object_schema":
        return "json_schema", schema
    if format_type in ("json_object", "text") and (shown := schema_in_prompt(messages)) is not None:
        return "json_schema", shown  # a model told the schema in the prompt follows it
    return format_type, schema


def schema_in_prompt(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last JSON schema written into a user message, if any."""
    decoder = json.JSONDecoder()
    for message in reversed(messages):
        text = message_text(message)
        if message.get("role") != "user" or '"properties"' not in text:
            continue
        start = text.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(value, dict) and "properties" in value:
                return value
            start = text.find("{", start + 1)
    return None


def visible_messages(settings: SimulatorSettings, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages the model sees through its chat template."""
    if not settings.drop_system:
        return messages
    return [m for m in messages if m.get("role") != "system"]


_CODE_WORD = re.compile(r"\bcode word is ([A-Z0-9][A-Z0-9-]{2,40})")


def code_word(messages: list[dict[str, Any]]) -> str | None:
    """A model asked for a code word it was told (in any message it sees) repeats it: how a client
    finds out whether the system message reaches the model."""
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    if not users or "code word" not in users[-1].lower():
        return None
    for message in messages:
        if (match := _CODE_WORD.search(message_text(message))) is not None:
            return match.group(1)
    return None


def context_error(settings: SimulatorSettings, prompt_tokens: int, max_tokens: int | None) -> str | None:
    """OpenAI's (and vLLM's) words when prompt and completion do not fit the context window."""
    wanted = prompt_tokens + (max_tokens or 0)
    if not settings.context_tokens or wanted <= settings.context_tokens:
        return None
    return (f"This model's maximum context length is {settings.context_tokens} tokens. However, you requested "
            f"{wanted} tokens ({prompt_tokens} in the messages, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion.")


def dress(settings: SimulatorSettings, content: str, is_json: bool, messages: list[dict[str, Any]]) -> str:
    """The answer as a real model writes it, with the configured quirks."""
    quirks = settings.quirks
    if "empty" in quirks:
        return ""
    if "echo" in quirks:
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        return users[-1] if users else content
    if is_json:
        if "control_chars" in quirks:  # raw line breaks inside strings, as small models write them
            content = json.dumps(json.loads(content), ensure_ascii=False, separators=(",", ":")).replace(" ", "\n")
        if "smart_quotes" in quirks:
            content = "".join(("“" if i % 2 else "”") + part if i else part
                              for i, part in enumerate(content.split('"')))
        if "second_object" in quirks:
            content = f"{content}\n{content}"
        if "fence" in quirks:
            content = f"```json\n{content}\n```"
        if "prose" in quirks:
            content = f"Sure! Here is the JSON you asked for:\n{content}\nLet me know if you need anything else."
    if "think" in quirks:
        content = THINKING + content
    return content
