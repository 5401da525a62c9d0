"""`synthstream config show`: the effective configuration, secrets masked, as TOML or JSON."""

from __future__ import annotations

import argparse
import re
from typing import Any

import orjson

from streamer.cli.base import Subparsers, settings_from

# Stands for an unset value (None) while tomli_w writes, which has no null; the line is then a comment.
_UNSET = "\x00unset"
_UNSET_LINE = re.compile(r'^(.+) = "\\u0000unset"$', flags=re.MULTILINE)


def register(sub: Subparsers) -> None:
    c = sub.add_parser("config", help="configuration")
    c.add_argument("action", choices=["show"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.config import mask_secrets

    settings = settings_from(args)
    shown = mask_secrets(settings.model_dump(exclude={"stages"}))
    shown["stages"] = {
        name: mask_secrets(stage.bind(settings).settings.model_dump()) for name, stage in STAGES.items()
    }
    if args.json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print(to_toml(shown))
    return 0


def to_toml(tree: dict[str, Any]) -> str:
    """`tree` as a TOML document; an unset key as a comment (`# key = (unset)`), empty tables left out."""
    import tomli_w

    return _described(_UNSET_LINE.sub(r"# \1 = (unset)", tomli_w.dumps(_writable(tree))).rstrip("\n"))


_KEY_LINE = re.compile(r"^(?:# )?(\w+) = ")


def _described(text: str) -> str:
    """Each setting that has a description in streamer.config gets it as a trailing comment, so
    defaults whose meaning is not obvious (`requests_per_minute = 0`) say what they mean."""
    from pydantic import BaseModel

    from streamer.config import LLMSettings

    section: type[BaseModel] | None = None
    lines = []
    for line in text.splitlines():
        if line.startswith("["):
            header = line.strip("[]")
            # [stages.X.llm] sits under a dict of stages, not a model: it is an [llm] table.
            section = _section_model(header) or (LLMSettings if header.endswith(".llm") else None)
        elif section is not None and (key := _KEY_LINE.match(line)):
            field = section.model_fields.get(key.group(1))
            if field is not None and field.description:
                line = f"{line}  # {field.description}"
        lines.append(line)
    return "\n".join(lines)


def _section_model(header: str) -> Any:
    """The settings model of a table header (`llm`, `feed.filters`), or None."""
    from pydantic import BaseModel

    from streamer.config import Settings

    model: Any = Settings
    for name in header.split("."):
        field = model.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _writable(value: Any) -> Any:
    """`value` with what TOML cannot hold replaced: None by the unset marker, other types by their text."""
    if isinstance(value, dict):
        tables = {key: _writable(item) for key, item in value.items()}
        return {key: item for key, item in tables.items() if item != {}}
    if isinstance(value, (list, tuple)):
        return [_writable(item) for item in value]
    if value is None:
        return _UNSET
    return value if isinstance(value, (bool, int, float, str)) else str(value)
