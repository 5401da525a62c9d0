"""Filtering and one-line descriptions of envelopes, for the commands people watch records with.

`--where FIELD=VALUE` names a dotted path into the envelope JSON (`data.stage=instruction`,
`method=glan`, `lineage.details.sampling.mode=integrative`). A path through a list matches when
any element matches (`lineage.stages.stage=judge`); a number picks one element
(`lineage.stages.0.stage=situation`). Values compare as text; `true`/`false`/`null` and numbers
match JSON booleans, nulls and numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from streamer.text import shorten

def decode_value(value: bytes | None) -> Any:
    """A record value as JSON (None when it is none or not JSON: other writers share the topics)."""
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None


# Payload fields that say best what a record is about, in order of preference.
TEXT_FIELDS = ("instruction", "situation", "text", "name", "subject", "reason", "error", "response")
# Fields put before the text because the text alone does not say who decided it.
CONTEXT_FIELDS = ("stage", "error_type")


CONDITION_START = re.compile(r"\s+(?=[^\s=]+=)")  # spaces before the next FIELD=


@dataclass(frozen=True)
class Where:
    path: tuple[str, ...]
    value: str

    @classmethod
    def parse(cls, text: str) -> Where:
        field, sep, value = text.partition("=")
        if not sep or not field.strip() or any(not part for part in field.strip().split(".")):
            raise ValueError(f"--where {text!r}: expected FIELD=VALUE, e.g. data.stage=instruction")
        return cls(tuple(field.strip().split(".")), value)

    @classmethod
    def parse_line(cls, text: str) -> list[Where]:
        """Conditions written on one line, as the console's filter box has them: a new one starts at
        each `FIELD=` after a space, so a value may hold spaces (`data.meta.title=Programming FAQ`)."""
        return [cls.parse(part) for part in CONDITION_START.split(text.strip()) if part]

    def matches(self, envelope: Any) -> bool:
        return any(_same(found, self.value) for found in _lookup(envelope, self.path))


def matches_all(envelope: Any, wheres: list[Where]) -> bool:
    return all(w.matches(envelope) for w in wheres)


def _lookup(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        if isinstance(node, list):
            yield from node
        yield node
        return
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        if head in node:
            yield from _lookup(node[head], rest)
    elif isinstance(node, list):
        if head.isdigit():
            if int(head) < len(node):
                yield from _lookup(node[int(head)], rest)
        else:
            for item in node:
                yield from _lookup(item, path)


def _same(found: Any, wanted: str) -> bool:
    if isinstance(found, str):
        return found == wanted
    if isinstance(found, bool):
        return wanted.lower() == str(found).lower()
    if found is None:
        return wanted.lower() in ("null", "none")
    if isinstance(found, (int, float)):
        try:
            return float(wanted) == found
        except ValueError:
            return False
    return False


def document_head(data: dict[str, Any]) -> str:
    """A document's title and address ("Title | https://…"; its source file when it has no URL)."""
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    where = meta.get("url") if isinstance(meta.get("url"), str) and meta["url"].strip() else data.get("source")
    return " | ".join(v.strip() for v in (meta.get("title"), where) if isinstance(v, str) and v.strip())


def short_text(envelope: dict[str, Any], width: int = 100) -> str:
    """What a record is about, on one line: e.g. the instruction, or a dead letter's stage and error."""
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    if envelope.get("kind") == "document":  # a page: its title and where it came from, then its text
        head = document_head(data)
        text = re.sub(r"\s+", " ", str(data.get("text") or "")).strip()
        if not head:
            return shorten(text, width)
        # The title and URL are what tell pages apart, so a long URL shortens the text, not itself.
        room = max(width - len(head) - 2, 40)
        return f"{head}: {shorten(text, room)}"
    rejected = data.get("record") if envelope.get("kind") == "rejection" else None
    if isinstance(rejected, dict) and document_head(rejected):  # a rejected page: which one, and why
        return shorten(f"{data.get('stage')}: {data.get('reason')} — {document_head(rejected)}", width)
    context = [str(data[f]) for f in CONTEXT_FIELDS if isinstance(data.get(f), str)]
    text = next((data[f] for f in TEXT_FIELDS if isinstance(data.get(f), str) and data[f].strip()), None)
    if text is None:
        text = next((v for v in data.values() if isinstance(v, str) and v.strip()), "")
    line = re.sub(r"\s+", " ", f"{' '.join(context)}: {text}" if context else text).strip()
    return shorten(line, width)
