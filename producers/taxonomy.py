"""The GLAN taxonomy file: fields -> sub-fields -> disciplines, in YAML a person edits.

Loading walks the YAML node tree (not the plain Python objects) so every error names the line
it is on: a taxonomy is hand-edited, and "line 212: discipline must be a name" beats a
traceback. Writing produces the same shape, for `glan propose-taxonomy`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from consumers.payloads import Discipline
from streamer.records import Envelope, new_root
from streamer.text import name_key

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")
FORMAT_VERSION = 1


class TaxonomyError(ValueError):
    """A problem in a taxonomy file; the message names the file and line."""


@dataclass(frozen=True)
class TaxonomyEntry:
    field: str
    sub_field: str
    name: str
    description: str | None
    source: str
    line: int

    @property
    def path(self) -> tuple[str, str, str]:
        return (self.field, self.sub_field, self.name)


@dataclass(frozen=True)
class Taxonomy:
    source: str
    disciplines: tuple[TaxonomyEntry, ...]

    def select(self, names: list[str] | None) -> list[TaxonomyEntry]:
        """Disciplines named in `names` (a field or sub-field name selects all under it)."""
        if not names:
            return list(self.disciplines)
        chosen: dict[str, TaxonomyEntry] = {}
        for wanted in names:
            key = name_key(wanted)
            hits = [d for d in self.disciplines if key in (name_key(d.name), name_key(d.sub_field), name_key(d.field))]
            if not hits:
                known = sorted({d.name for d in self.disciplines} | {d.field for d in self.disciplines})
                close = difflib.get_close_matches(wanted, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise TaxonomyError(f"{self.source}: no discipline, sub-field or field named {wanted!r}{hint}")
            chosen.update((name_key(d.name), d) for d in hits)
        return list(chosen.values())


def load_taxonomy(path: Path) -> Taxonomy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy: {exc}") from None
    return parse_taxonomy(text, str(path))


def parse_taxonomy(text: str, source: str) -> Taxonomy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise TaxonomyError(f"{source}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{source}: not valid YAML: {exc}") from None
    return Taxonomy(source, tuple(_TreeReader(source).read(root)))


class _TreeReader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.seen: dict[str, int] = {}  # discipline name key -> line

    def fail(self, node: yaml.Node | None, message: str) -> TaxonomyError:
        where = f", line {node.start_mark.line + 1}" if node is not None else ""
        return TaxonomyError(f"{self.source}{where}: {message}")

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of names")
        keys: set[str] = set()
        for key, _ in node.value:
            name = self.name(key, what)
            if name_key(name) in keys:
                raise self.fail(key, f"{what} {name!r} appears twice")
            keys.add(name_key(name))
        return node.value

    def name(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            raise self.fail(node, f"{what} name must be non-empty text")
        return str(node.value).strip()

    def read(self, root: yaml.Node | None) -> list[TaxonomyEntry]:
        if root is None:
            raise self.fail(None, "the file is empty; expected `version: 1` and `fields:`")
        top = {self.name(k, "top-level key"): v for k, v in self.mapping(root, "the file")}
        if "fields" not in top:
            raise self.fail(root, "missing `fields:` (fields -> sub-fields -> list of disciplines)")
        version = top.get("version")
        if version is not None and getattr(version, "value", None) != str(FORMAT_VERSION):
            raise self.fail(version, f"unsupported taxonomy version {getattr(version, 'value', '?')}; "
                                     f"this synthstream reads version {FORMAT_VERSION}")
        unknown = set(top) - {"fields", "version"}
        if unknown:
            raise self.fail(root, f"unknown top-level key(s) {', '.join(sorted(unknown))}")
        entries: list[TaxonomyEntry] = []
        for field_node, sub_fields in self.mapping(top["fields"], "field"):
            field = self.name(field_node, "field")
            for sub_node, disciplines in self.mapping(sub_fields, f"sub-field of {field!r}"):
                sub_field = self.name(sub_node, "sub-field")
                if not isinstance(disciplines, yaml.SequenceNode) or not disciplines.value:
                    raise self.fail(disciplines, f"sub-field {sub_field!r} needs a non-empty list of disciplines")
                entries.extend(self.discipline(item, field, sub_field) for item in disciplines.value)
        if not entries:
            raise self.fail(top["fields"], "no disciplines")
        return entries

    def discipline(self, node: yaml.Node, field: str, sub_field: str) -> TaxonomyEntry:
        description = None
        if isinstance(node, yaml.MappingNode):
            parts = {self.name(k, "discipline key"): v for k, v in node.value}
            if "name" not in parts or set(parts) - {"name", "description"}:
                raise self.fail(node, "a discipline mapping has `name` and optionally `description`")
            name = self.name(parts["name"], "discipline")
            if "description" in parts:
                description = self.name(parts["description"], "description")
        elif isinstance(node, yaml.ScalarNode):
            name = self.name(node, "discipline")
        else:
            raise self.fail(node, "a discipline is a name or a mapping with `name` (and `description`)")
        key = name_key(name)
        if key in self.seen:
            raise self.fail(node, f"discipline {name!r} already appears on line {self.seen[key]}")
        self.seen[key] = node.start_mark.line + 1
        return TaxonomyEntry(field, sub_field, name, description, self.source, node.start_mark.line + 1)


def dump_taxonomy(tree: dict[str, dict[str, list[dict[str, Any]]]], header: str = "") -> str:
    """YAML for a field -> sub-field -> [{name, description}] tree, in the loader's shape."""
    def entry(d: dict[str, Any]) -> Any:
        return {"name": d["name"], "description": d["description"]} if d.get("description") else d["name"]

    body = {"version": FORMAT_VERSION,
            "fields": {f: {s: [entry(d) for d in ds] for s, ds in subs.items()} for f, subs in tree.items()}}
    text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + text


def discipline_record(entry: TaxonomyEntry) -> Envelope:
    """The root record of a discipline. Its id depends on the name alone, so feeding an edited
    taxonomy again recognises the disciplines already sent, wherever they moved."""
    data = Discipline(name=entry.name, field=entry.field, sub_field=entry.sub_field,
                      description=entry.description, source=f"{entry.source}:{entry.line}")
    return new_root(data, method="glan", identity=f"glan discipline: {name_key(entry.name)}")
