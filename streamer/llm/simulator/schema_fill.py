"""A value for a JSON schema, as pydantic v2 emits it, with strings drawn from the prompt's words.

Structured answers (`response_format=json_schema`) are filled from here, so a well-formed answer
always validates. `$ref`, `allOf`, `anyOf`/`oneOf`, `const`/`enum`, bounds, lengths, `multipleOf`,
`uniqueItems`, tuples, mappings and common string formats are honoured; recursive and runaway
schemas are cut short with the smallest valid values.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from typing import Any, Callable

from streamer.llm.simulator.words import FALLBACK_WORDS, word_run

MAX_DEPTH = 8  # past this, schemas take the shortest way out (null, fewest items)
MAX_RECURSION = 2  # times one $ref may enclose itself before its subtree goes minimal
MAX_VALUES = 5000  # values per document; keeps any schema's answer a sane size
_SHORT_HINTS = frozenset(
    "name names title titles keyword keywords level levels label labels tag tags category categories "
    "concept concepts subtopic subtopics".split()
)


def fill_schema(schema: dict[str, Any], words: list[str], rng: random.Random) -> Any:
    """A value valid against `schema` (as pydantic v2 emits it), with strings drawn from `words`."""
    return _Filler(schema, words or list(FALLBACK_WORDS), rng).value(schema, "", 0)


def _hint_tokens(name: str) -> set[str]:
    """`keyWords`/`key_words`/`title` -> lower-case tokens, to spot fields that want short values."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return {t.lower() for t in re.split(r"[\s_\-.]+", spaced) if t}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


class _Filler:
    def __init__(self, root: dict[str, Any], words: list[str], rng: random.Random) -> None:
        self.root = root
        self.words = words
        self.rng = rng
        self.ref_path: list[str] = []  # $refs being filled, outermost first
        self.budget = MAX_VALUES

    # -- schema plumbing

    def resolve(self, schema: Any) -> dict[str, Any]:
        """Follow `$ref`s and merge `allOf`, keeping sibling keywords (descriptions, bounds)."""
        if not isinstance(schema, dict):
            return {}  # `true` / `items: false` and the like: anything goes
        for _ in range(64):  # a ref chain longer than this is a cycle
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merge(self._lookup(ref), siblings)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged = _merge(merged, self.resolve(part))
            schema = _merge(merged, {k: v for k, v in schema.items() if k != "allOf"})
        return schema

    def _lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}  # remote refs are not fetched
        node: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def _is_null(self, schema: Any) -> bool:
        return self.resolve(schema).get("type") == "null"

    def _choose_option(self, options: list[Any], depth: int) -> Any:
        nulls = [o for o in options if self._is_null(o)]
        others = [o for o in options if not self._is_null(o)]
        if nulls and (depth > MAX_DEPTH or not others):
            return nulls[0]
        return others[0] if others else {}

    @staticmethod
    def _type_of(schema: dict[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            return "null" if not non_null or (depth > MAX_DEPTH and "null" in kind) else non_null[0]
        if isinstance(kind, str):
            return kind
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return "string"

    # -- values

    def value(self, schema: Any, hint: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:  # a runaway schema: finish with the smallest valid values
            depth = max(depth, MAX_DEPTH + 1)
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return self._value(self.resolve(schema), hint, depth)
        # A recursive model (a tree) may nest into itself a couple of times, then must stop.
        if self.ref_path.count(ref) >= MAX_RECURSION:
            depth = max(depth, MAX_DEPTH + 1)
        self.ref_path.append(ref)
        try:
            return self._value(self.resolve(schema), hint, depth)
        finally:
            self.ref_path.pop()

    def _value(self, schema: dict[str, Any], hint: str, depth: int) -> Any:
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self._choose_option(schema[key], depth), hint, depth)
        kind = self._type_of(schema, depth)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, hint, depth)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, hint)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            # Optional properties too: a fuller answer exercises more of the consumer.
            return {name: self.value(sub, name, depth + 1) for name, sub in properties.items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and depth <= MAX_DEPTH:
            # A bare mapping (dict[str, X]): a few entries keyed by prompt words.
            low = int(schema.get("minProperties", 1))
            high = int(schema.get("maxProperties", max(low, 3)))
            count = self.rng.randint(min(low, high), high)
            result: dict[str, Any] = {}
            for _ in range(count * 10):
                if len(result) >= count:
                    break
                result.setdefault(self.rng.choice(self.words), self.value(extra, "", depth + 1))
            return result
        return {}

    def array(self, schema: dict[str, Any], hint: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:  # tuples
            values = [self.value(p, hint, depth + 1) for p in prefix]
            extra = schema.get("items")
            while isinstance(extra, dict) and len(values) < int(schema.get("minItems", 0)):
                values.append(self.value(extra, hint, depth + 1))
            return values
        count = self._array_length(schema, depth)
        items = schema.get("items", {})
        if not schema.get("uniqueItems"):
            return [self.value(items, hint, depth + 1) for _ in range(count)]
        # Sets: draw until enough distinct values (few enum options may cap it below count).
        seen: dict[str, Any] = {}
        for _ in range(count * 20):
            if len(seen) >= count:
                break
            item = self.value(items, hint, depth + 1)
            seen.setdefault(json.dumps(item, sort_keys=True), item)
        return list(seen.values())

    def _array_length(self, schema: dict[str, Any], depth: int) -> int:
        if depth > MAX_DEPTH:
            return int(schema.get("minItems", 0))
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, min(low + 3, 5))))
        return self.rng.randint(min(low, high), high)

    def integer(self, schema: dict[str, Any]) -> int:
        lows = [math.ceil(v) for v in _numbers(schema, "minimum")]
        lows += [math.floor(v) + 1 for v in _numbers(schema, "exclusiveMinimum")]
        highs = [math.floor(v) for v in _numbers(schema, "maximum")]
        highs += [math.ceil(v) - 1 for v in _numbers(schema, "exclusiveMaximum")]
        low, high = _open_range(max(lows, default=None), min(highs, default=None))
        low, high = math.ceil(low), math.floor(high)
        if low > high:
            return low  # unsatisfiable bounds: nothing valid exists
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = math.ceil(low / step) * step, math.floor(high / step) * step
            if first <= last:
                return first + step * self.rng.randint(0, (last - first) // step)
        return self.rng.randint(low, high)

    def number(self, schema: dict[str, Any]) -> float:
        low, high = _open_range(
            max(_numbers(schema, "minimum", "exclusiveMinimum"), default=None),
            min(_numbers(schema, "maximum", "exclusiveMaximum"), default=None),
        )
        # Two decimals read like a model's numbers; unrounded draws are the fallback.
        candidates = [round(self.rng.uniform(low, high), 2) for _ in range(5)]
        candidates += [self.rng.uniform(low, high) for _ in range(5)]
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            candidates = [round(self.rng.randint(first, last) * step, 10)] if first <= last else []
        for value in candidates:
            if _within(value, schema):
                return value
        return (low + high) / 2

    def string(self, schema: dict[str, Any], hint: str) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt](self)
        if _hint_tokens(hint) & _SHORT_HINTS:
            count = self.rng.randint(1, 3)
        else:
            # Longer prompts give longer strings, up to 20 words.
            count = self.rng.randint(4, max(4, min(20, len(self.words))))
        text = word_run(self.words, self.rng, count)
        return self._fit_length(text, schema.get("minLength"), schema.get("maxLength"))

    def _fit_length(self, text: str, min_length: Any, max_length: Any) -> str:
        low = int(min_length) if isinstance(min_length, int) else 0
        while len(text) < low:
            text += " " + word_run(self.words, self.rng, self.rng.randint(1, 5))
        if isinstance(max_length, int) and len(text) > max_length:
            cut = text[:max_length]
            whole_words = cut.rsplit(" ", 1)[0] if " " in cut else cut
            text = whole_words if len(whole_words) >= max(low, 1) else cut
            # A hard cut may end on a space; keep the length but not the trailing whitespace.
            stripped = text.rstrip()
            text = stripped + "x" * (len(text) - len(stripped))
        return text

    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]", "", self.rng.choice(self.words).lower()) or "item"


def _numbers(schema: dict[str, Any], *keys: str) -> list[float]:
    return [schema[k] for k in keys if isinstance(schema.get(k), (int, float)) and not isinstance(schema[k], bool)]


def _open_range(low: float | None, high: float | None) -> tuple[float, float]:
    """Fill in missing bounds: 0..10 when open on both sides, 10 wide when open on one."""
    if low is None and high is None:
        return 0, 10
    if low is None:
        assert high is not None
        return (0 if high >= 0 else high - 10), high
    if high is None:
        return low, max(low, 0) + 10
    return low, high


def _within(value: float, schema: dict[str, Any]) -> bool:
    return (
        all(value >= v for v in _numbers(schema, "minimum"))
        and all(value > v for v in _numbers(schema, "exclusiveMinimum"))
        and all(value <= v for v in _numbers(schema, "maximum"))
        and all(value < v for v in _numbers(schema, "exclusiveMaximum"))
    )


def _fmt_datetime(f: _Filler) -> str:
    r = f.rng
    return f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z"


_FORMATS: dict[str, Callable[[_Filler], str]] = {
    "date-time": _fmt_datetime,
    "date": lambda f: _fmt_datetime(f)[:10],
    "time": lambda f: _fmt_datetime(f)[11:19],
    "duration": lambda f: f"PT{f.rng.randint(1, 90)}M",
    "uuid": lambda f: str(uuid.UUID(int=f.rng.getrandbits(128), version=4)),
    "email": lambda f: f"{f.slug()}@example.com",
    "uri": lambda f: f"https://example.com/{f.slug()}",
    "ipv4": lambda f: f"192.0.2.{f.rng.randint(1, 254)}",
    "ipv6": lambda f: f"2001:db8::{f.rng.randint(1, 0xFFFF):x}",
}
