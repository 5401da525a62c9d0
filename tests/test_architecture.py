"""The rooms of ARCHITECTURE.md keep to their arrows: checked on the imports themselves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for top in ("streamer", "consumers", "producers") for p in sorted((ROOT / top).rglob("*.py"))]


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


IMPORTS = {module_of(p): imports_of(p) for p in SOURCES}


def importers(target: str) -> set[str]:
    return {m for m, found in IMPORTS.items() if any(i == target or i.startswith(target + ".") for i in found)}


def test_stages_and_the_record_processor_know_nothing_of_kafka():
    kafka_free = [m for m in IMPORTS if m.startswith("consumers")] + [
        "streamer.runtime.stage", "streamer.runtime.processor", "streamer.runtime.testing"]
    offenders = {m: sorted(i for i in IMPORTS[m] if i.startswith(("aiokafka", "streamer.kafka")))
                 for m in kafka_free}
    assert not {m: i for m, i in offenders.items() if i}


def test_production_code_does_not_import_the_simulator():
    outside = {m for m in importers("streamer.llm.simulator") if not m.startswith("streamer.llm.simulator")}
    assert outside <= {"streamer.ops.demo", "streamer.ops.estimate", "streamer.cli.glan", "streamer.cli.simulate"}, outside


@pytest.mark.parametrize("room", ["streamer.kafka", "streamer.llm", "streamer.metrics", "streamer.state",
                                  "streamer.storage", "streamer.runtime", "streamer.records", "streamer.config"])
def test_lower_rooms_never_import_commands_operations_or_reports(room):
    upward = ("streamer.cli", "streamer.ops", "streamer.report")
    offenders = {m: sorted(i for i in found if i.startswith(upward))
                 for m, found in IMPORTS.items() if m == room or m.startswith(room + ".")}
    assert not {m: i for m, i in offenders.items() if i}


def test_only_the_cli_imports_the_cli():
    assert importers("streamer.cli") <= {m for m in IMPORTS if m.startswith("streamer.cli")}


def test_loading_the_stages_leaves_the_heavy_libraries_to_the_processes_that_use_them():
    """`synthstream feed`, `status`, `tap`… load every stage declaration to validate options; none
    of them should pay for the OpenAI client, FAISS or the encoder's runtime (and torch is in no
    default path at all)."""
    code = ("import sys, consumers; from streamer.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('openai', 'faiss', 'onnxruntime', 'onnx', 'torch', 'sentence_transformers') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_the_console_keeps_to_its_arrows_and_only_the_cli_imports_it():
    allowed = ("streamer.ui", "streamer.ops", "streamer.report", "streamer.storage", "streamer.kafka",
               "streamer.metrics", "streamer.config", "streamer.records", "streamer.text", "consumers")
    console = {m: found for m, found in IMPORTS.items() if m.startswith("streamer.ui")}
    assert console, "streamer/ui/ not found"
    offenders = {m: sorted(i for i in found if i.startswith(("streamer", "consumers", "producers"))
                           and not i.startswith(allowed)) for m, found in console.items()}
    assert not {m: i for m, i in offenders.items() if i}
    assert importers("streamer.ui") - set(console) <= {m for m in IMPORTS if m.startswith("streamer.cli")}
