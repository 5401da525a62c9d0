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
    shown["stages"] = {name: _stage_table(stage.bind(settings).settings.model_dump()) for name, stage in STAGES.items()}
    if args.json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print(to_toml(shown))
    return 0


def _stage_table(effective: dict[str, Any]) -> dict[str, Any]:
    """A stage's effective settings as `[stages.NAME]` takes them: its options beside the runtime
    keys (not under an `options` table, which the loader would refuse), its LLM as `[stages.NAME.llm]`."""
    from streamer.config import mask_secrets

    options = effective.pop("options", None) or {}
    llm = effective.pop("llm")
    return mask_secrets({**effective, **options, "llm": llm})


def to_toml(tree: dict[str, Any]) -> str:
    """`tree` as a TOML document; an unset key as a comment (`# key = (unset)`), empty tables left out."""
    import tomli_w

    return _described(_UNSET_LINE.sub(r"# \1 = (unset)", tomli_w.dumps(_writable(tree))).rstrip("\n"))


_KEY_LINE = re.compile(r"^(?:# )?(\w+) = ")


def _described(text: str) -> str:
    """Each setting that has a description in streamer.config (or a stage's options model) gets it
    as a trailing comment, so defaults whose meaning is not obvious (`requests_per_minute = 0`) say
    what they mean."""
    fields: dict[str, Any] = {}
    lines = []
    for line in text.splitlines():
        if line.startswith("["):
            fields = _fields_of(line.strip("[]"))
        elif key := _KEY_LINE.match(line):
            field = fields.get(key.group(1))
            if field is not None and field.description:
                line = f"{line}  # {field.description}"
        lines.append(line)
    return "\n".join(lines)


def _fields_of(header: str) -> dict[str, Any]:
    """The settings fields of a table header (`llm`, `feed.filters`, `stages.judge`, `stages.judge.llm`)."""
    from consumers import STAGES
    from streamer.config import LLMSettings, StageSettings

    parts = header.split(".")
    if parts[0] != "stages":
        return _section_fields(parts)
    if parts[-1] == "llm":  # [stages.X.llm] is an [llm] table
        return dict(LLMSettings.model_fields)
    stage = STAGES.get(parts[1]) if len(parts) == 2 else None
    options = stage.options_model.model_fields if stage is not None else {}
    return {**options, **StageSettings.model_fields}


def _section_fields(names: list[str]) -> dict[str, Any]:
    from pydantic import BaseModel

    from streamer.config import Settings

    model: Any = Settings
    for name in names:
        field = model.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return {}
        model = annotation
    return dict(model.model_fields)


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
