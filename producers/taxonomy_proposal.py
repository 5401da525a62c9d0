"""`synthstream glan propose-taxonomy`: an LLM drafts a taxonomy, level by level, for a person to edit.

Fields first, then the sub-fields of each field, then the disciplines of each sub-field, so every
answer is small and focused. Repeated names are dropped (the loader requires unique disciplines)
and the result is written in the shipped taxonomy's shape, then loaded back to prove it is valid.
GLAN's authors checked the LLM's taxonomy by hand; the header of the file says so too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from producers.taxonomy import Taxonomy, dump_taxonomy, load_taxonomy
from streamer.config import Settings
from streamer.llm.client import LLMClient, LLMPool
from streamer.runtime.stage import LIST_OUTPUT_TOKENS, Prompt
from streamer.text import name_key

SYSTEM = (
    "You map human knowledge and skills the way education systems organise them, from research "
    "disciplines to vocational trades. Reply with JSON only."
)
FIELDS_PROMPT = Prompt(version="1", system=SYSTEM, user=(
    "List {count} broad fields that together cover all of human knowledge and capabilities taught in "
    "schools, universities and vocational training: sciences, humanities, social sciences, engineering, "
    "health, arts and practical skills. Give each a name and a one-sentence description."))
SUB_FIELDS_PROMPT = Prompt(version="1", system=SYSTEM, user=(
    "Field: {field} ({description})\nSplit this field into {count} sub-fields that do not overlap and "
    "together cover it. Give each a name and a one-sentence description."))
DISCIPLINES_PROMPT = Prompt(version="1", system=SYSTEM, user=(
    "Field: {field}\nSub-field: {sub_field} ({description})\nList {count} distinct disciplines of this "
    "sub-field: areas that are taught as a whole programme or course family. Give each a name and a "
    "one-sentence description."))


class Node(BaseModel):
    name: str = Field(min_length=2, max_length=120)
    description: str = Field(min_length=2)


class NodeList(BaseModel):
    items: list[Node] = Field(min_length=1, max_length=30)


@dataclass
class ProposalShape:
    fields: int = 11
    sub_fields: int = 3
    disciplines: int = 5


class _Proposer:
    def __init__(self, llm: LLMClient, shape: ProposalShape, out=sys.stderr) -> None:
        self.llm = llm
        self.shape = shape
        self.out = out
        self.used: set[str] = set()  # name keys already in the tree, at any level

    async def ask(self, prompt: Prompt, count: int, **fields: Any) -> list[dict[str, str]]:
        result = await self.llm.structured(prompt.messages(count=count, **fields), NodeList,
                                           max_tokens=max(self.llm.settings.max_tokens, LIST_OUTPUT_TOKENS))
        return [n.model_dump() for n in result.parsed.items]

    def fresh(self, nodes: list[dict[str, str]], count: int) -> list[dict[str, str]]:
        """Up to `count` nodes whose names are not used yet (an LLM repeats itself across calls)."""
        kept = []
        for node in nodes:
            key = name_key(node["name"])
            if key and key not in self.used and len(kept) < count:
                self.used.add(key)
                kept.append({"name": node["name"].strip(), "description": node["description"].strip()})
        return kept

    async def propose(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        s = self.shape
        fields = self.fresh(await self.ask(FIELDS_PROMPT, s.fields), s.fields)
        self.say(f"{len(fields)} fields; asking for their sub-fields")
        subs_per_field = await asyncio.gather(*(
            self.ask(SUB_FIELDS_PROMPT, s.sub_fields, field=f["name"], description=f["description"]) for f in fields))
        subs = {f["name"]: self.fresh(found, s.sub_fields) for f, found in zip(fields, subs_per_field)}
        pairs = [(f, sub) for f, found in subs.items() for sub in found]
        self.say(f"{len(pairs)} sub-fields; asking for their disciplines")
        found_disciplines = await asyncio.gather(*(
            self.ask(DISCIPLINES_PROMPT, s.disciplines, field=f, sub_field=sub["name"],
                     description=sub["description"]) for f, sub in pairs))
        tree: dict[str, dict[str, list[dict[str, str]]]] = {}
        for (f, sub), found in zip(pairs, found_disciplines):
            disciplines = self.fresh(found, s.disciplines)
            if disciplines:  # a sub-field whose every discipline repeated an earlier name is left out
                tree.setdefault(f, {})[sub["name"]] = disciplines
        return tree

    def say(self, text: str) -> None:
        print(f"propose-taxonomy: {text}", file=self.out, flush=True)


async def propose_taxonomy(settings: Settings, out_path: Path, shape: ProposalShape) -> Taxonomy:
    pool = LLMPool()
    try:
        llm = pool.client(settings.llm, "propose-taxonomy")
        proposer = _Proposer(llm, shape)
        tree = await proposer.propose()
    finally:
        await pool.close()
    header = (f"Taxonomy proposed by {settings.llm.model} with `synthstream glan propose-taxonomy` on "
              f"{time.strftime('%Y-%m-%d')}.\nReview it before use: merge overlaps, fix names, add what is "
              f"missing, delete what you do not want.\nThen: synthstream feed taxonomy {out_path.name}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(dump_taxonomy(tree, header), encoding="utf-8")
    return load_taxonomy(out_path)
