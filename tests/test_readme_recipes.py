"""The README's recipes, followed literally: their commands are parsed out of README.md and run as a
user would run them in a shell (lines ending in `&` as background processes, stopped by pid at the
end). Only the ports differ (free ones instead of 9092 and 8000), and the working directory is a
fresh one with the clone's `examples/`. Also: every relative link in README.md exists in the clone,
and every `[stages…]` TOML snippet in it loads through the real settings loader."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from streamer.config import load_settings
from streamer.processes import free_port, port_open

from helpers import ENGINES, read_topic, stop_process, stored_rows, wait_for

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MULTI_PROCESS = "### Running the pipeline as separate processes"
REPLAY_WHILE_RUNNING = "Replaying under a version while the workers of the multi-process recipe run"
RECIPE_PORTS = {"9092": "broker", "8000": "llm"}  # what the recipe listens on; a test uses free ports
RECIPE_BROKER = "127.0.0.1:9092"


def fenced_block_after(marker: str, text: str | None = None) -> list[str]:
    """The lines of the first fenced code block after the line starting with `marker`."""
    lines = (text if text is not None else README.read_text()).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    opening = next(i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("```"))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].lstrip().startswith("```"))
    return lines[opening + 1:closing]


def commands_of(block: list[str]) -> list[str]:
    """Shell commands without their trailing comments."""
    commands = []
    for line in block:
        command = re.sub(r"(^|\s)#.*$", "", line).strip()
        if command:
            commands.append(command)
    return commands


@dataclass
class Shell:
    """Runs recipe lines as a shell would: `export` sets the environment of what follows, `&` runs
    in the background (exec'd, so the pid is the command's own), anything else must exit 0."""

    cwd: Path
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen] = field(default_factory=list)
    cluster: str | None = None  # a running Kafka cluster's bootstrap servers, in place of the recipe's broker

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess | subprocess.Popen:
        if self.cluster:
            command = command.replace(RECIPE_BROKER, self.cluster)
        for port, name in RECIPE_PORTS.items():
            command = re.sub(rf"\b{port}\b", str(self.ports[name]), command)
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                key, _, value = assignment.partition("=")
                self.env[key] = os.path.expanduser(value)
            return subprocess.CompletedProcess(command, 0)
        if command.endswith("&"):
            log = open(self.cwd / f"bg-{len(self.background)}.log", "wb")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(["bash", "-c", f"exec {command[:-1].strip()}"], cwd=self.cwd, env=self.env,
                                    stdout=log, stderr=log)
            proc.args = command  # type: ignore[misc] - for messages
            self.background.append(proc)
            return proc
        result = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True,
                                timeout=timeout)
        assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr.decode()[-3000:]}"
        return result

    def stop(self) -> None:
        for proc in reversed(self.background):  # workers before the broker they need to leave cleanly
            stop_process(proc, signal.SIGTERM, timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.args}\n{(self.cwd / f'bg-{i}.log').read_text(errors='replace')[-1500:]}"
                         for i, p in enumerate(self.background))


def user_env() -> dict[str, str]:
    """A user's shell: no synthstream settings of ours, the clone's venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHSTREAM_", "OPENAI_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module", params=ENGINES)
def recipe_engine(request: pytest.FixtureRequest) -> str:
    """The broker the recipe runs on: its own `synthstream broker` (tansu), or the session's 3-node
    Apache Kafka cluster in its place (a user pointing the recipe at a cluster they run)."""
    return request.param


@pytest.fixture(scope="module")
def recipe(recipe_engine: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Shell]:
    """The multi-process recipe, run to its end; its broker, simulator and workers keep running."""
    cwd = tmp_path_factory.mktemp(f"recipe-{recipe_engine}")
    (cwd / "examples").symlink_to(REPO / "examples")
    cluster = request.getfixturevalue("kafka_cluster").bootstrap_servers if recipe_engine == "kafka" else None
    shell = Shell(cwd, {"broker": free_port(), "llm": free_port()}, user_env(), cluster=cluster)
    try:
        for command in commands_of(fenced_block_after(MULTI_PROCESS)):
            if cluster and command.startswith("synthstream broker"):
                continue  # the cluster runs already; every other line is the user's, as written
            shell.run(command, timeout=150)
            if command.startswith("synthstream simulate-llm"):
                # A shell user starts typing the next line a moment later; the simulator takes a second to listen.
                wait_for(lambda: port_open("127.0.0.1", shell.ports["llm"]), 20, what="simulator")
        yield shell
    except BaseException:
        print(shell.logs())
        raise
    finally:
        shell.stop()


def test_the_multi_process_recipe_runs_every_stage_and_names_the_llm():
    from consumers import STAGES

    commands = commands_of(fenced_block_after(MULTI_PROCESS))
    started = {name for c in commands if c.startswith("synthstream run") for name in re.findall(r"--stage (\w+)", c)}
    synthquestions = {"attribution", "situation", "instruction", "judge", "embed", "dedup", "answer"}
    assert synthquestions <= set(STAGES) and started == synthquestions | {"sink"}
    assert any("SYNTHSTREAM_LLM__BASE_URL=" in c for c in commands)
    section = README.read_text().split(MULTI_PROCESS)[1].split("\n### ")[0]
    defaults = load_settings(env={}).llm
    for key in ("requests_per_minute", "tokens_per_minute", "max_in_flight"):
        assert f"`llm.{key} = {getattr(defaults, key)}`" in section or f"llm.{key}` = {getattr(defaults, key)}" in \
            section, f"the recipe's section does not state the default {key} ({getattr(defaults, key)})"


def test_following_the_multi_process_recipe_ends_every_fed_document_once(recipe: Shell):
    """Every document ends as a sample, or as dedup's rejection naming the instruction it duplicates
    (the simulator writes its instructions from the prompt's words, so two documents now and then
    get the same one); none is lost, none ends twice."""
    bootstrap = recipe.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    documents = {r["id"] for r in read_topic(bootstrap, "synth.docs")}
    assert len(documents) == len(list((REPO / "examples" / "docs").iterdir()))
    samples = stored_rows(recipe.cwd / "synthstream-data", "synth.samples")
    duplicates = [row for row in stored_rows(recipe.cwd / "synthstream-data", "synth.rejected")
                  if json.loads(row["envelope"])["data"]["stage"] == "dedup"]
    # By record id: a redelivered batch may be stored again under the same ids.
    ended = [*{row["id"]: row["root_id"] for row in samples}.values(),
             *{row["id"]: row["root_id"] for row in duplicates}.values()]
    assert sorted(ended) == sorted(documents) and len(duplicates) <= 2, (len(samples), len(duplicates))
    exported = [json.loads(line) for line in (recipe.cwd / "dataset.jsonl").read_text().splitlines()]
    assert len(exported) == len({row["id"] for row in samples})
    for proc in recipe.background:
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}:\n{recipe.logs()}"


def test_the_recipes_topics_are_laid_out_replicated_and_name_the_stored_files(recipe: Shell, recipe_engine: str):
    """Topics as synthstream created them: `kafka.partitions` (4) each, one for instructions.embedded;
    on the Kafka cluster three replicas each (its default.replication.factor: the recipe sets none).
    The sink's files are named by the broker's topic ids."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streamer.kafka.incarnation import incarnations, short

    settings = load_settings(env=recipe.env)
    topics = {f"synth.{name}": count for name, count in (("docs", 4), ("instructions.embedded", 1), ("samples", 4))}

    async def describe() -> dict[str, list[dict]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            return {t["topic"]: t["partitions"] for t in await admin.describe_topics(list(topics))}
        finally:
            await admin.close()

    described = asyncio.run(describe())
    assert {topic: len(parts) for topic, parts in described.items()} == topics, described
    copies = 3 if recipe_engine == "kafka" else 1
    assert {len(p["replicas"]) for parts in described.values() for p in parts} == {copies}, described
    ids = asyncio.run(incarnations(settings, ["samples"]))
    stored = [p.name for p in (recipe.cwd / "synthstream-data" / "store").rglob("*.parquet") if "samples" in str(p)]
    assert stored and all(f"-i{short(ids['samples'])}-" in name for name in stored), (ids, stored)


def test_status_and_the_console_read_the_recipes_pipeline(recipe: Shell):
    """`status` (table, --json, --until-idle) and the console's API against the recipe's running
    workers: every stage caught up, every figure matching what the store holds."""
    data_dir = recipe.cwd / "synthstream-data"
    samples = {row["id"]: row for row in stored_rows(data_dir, "synth.samples")}
    documents = {r["id"] for r in read_topic(recipe.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"], "synth.docs")}

    idle = recipe.run("synthstream status --until-idle --timeout 30", timeout=60)
    assert b"Traceback" not in idle.stderr
    figures = json.loads(recipe.run("synthstream status --json", timeout=60).stdout)
    stages = {row["stage"]: row for row in figures["stages"]}
    assert set(stages) >= {"attribution", "situation", "instruction", "judge", "embed", "dedup", "answer", "sink"}
    assert {name: row["lag"]["total"] for name, row in stages.items()} == dict.fromkeys(stages, 0), stages
    assert stages["situation"]["in"]["total"] == len(documents)
    assert stages["answer"]["out"]["total"] == len(samples)
    # The workers' LLM counters (kept on disk by each run) against what the simulator answered.
    with urllib.request.urlopen(f"http://127.0.0.1:{recipe.ports['llm']}/stats", timeout=10) as answered:
        completed = json.loads(answered.read())["completed"]
    # Beside them, each worker process that talks to the model asks it once, under stage llm-probe,
    # whether the system message arrives (llm.system_role = auto), unless an earlier one's finding is cached.
    workers = sum(c.startswith("synthstream run") for c in commands_of(fenced_block_after(MULTI_PROCESS)))
    probes = completed - sum((row["llm"] or {}).get("requests", 0) for row in stages.values())
    assert 0 <= probes <= workers, (probes, workers, stages)
    table = recipe.run("synthstream status", timeout=60).stdout.decode()
    assert table.startswith("synthstream status: prefix synth.") and "answer" in table

    port = free_port()
    ui = recipe.run(f"synthstream ui --port {port} &")
    log = recipe.cwd / f"bg-{len(recipe.background) - 1}.log"
    url = wait_for(lambda: re.search(r"^(http://\S+)$", log.read_text(errors="replace"), re.MULTILINE), 60,
                   what="the console's URL").group(1)
    try:
        assert set(get(url, "api/topics")["topics"]) >= {"docs", "samples", "instructions.embedded"}
        browsed = get(url, "api/topics/samples?start=beginning&limit=500")["rows"]
        assert {row["id"] for row in browsed} == set(samples)
        live = live_figures(url)
        assert {row["stage"]: row["lag"]["total"] for row in live["stages"]} == dict.fromkeys(stages, 0), live
        wanted = next(iter(samples))
        chain = get(url, f"api/samples/{wanted}")
        assert chain["envelope"]["id"] == wanted and chain["found_in"] == "store", chain.keys()
        assert chain["seeds_stored"] and None not in chain["seeds_stored"]  # the attributed seeds it was shown
        found = get(url, f"api/records/{samples[wanted]['root_id']}")  # a document: read from the docs topic
        assert found["topic"] == "docs" and found["envelope"]["id"] == samples[wanted]["root_id"], found
        assert get(url, "api/dlq") == {"letters": [], "pending": 0}
    finally:
        assert stop_process(ui) == 0, log.read_text(errors="replace")[-3000:]
        recipe.background.remove(ui)
    assert "Traceback" not in log.read_text(errors="replace")


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url.split("?")[0] + path, timeout=60) as response:
        return json.loads(response.read())


def live_figures(url: str) -> dict:
    """The console's first sampled figures from its event stream (the first event says "pending")."""
    with urllib.request.urlopen(url.split("?")[0] + "api/live", timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                figures = json.loads(line[len(b"data: "):])
                if not figures.get("pending"):
                    return figures
    raise AssertionError("the event stream ended without figures")


def test_replay_recipe_works_while_the_workers_run(recipe: Shell):
    """The workers hold dedup's state; the README's replay recipe needs nothing else, and a `run`
    beside them leaves dedup alone instead of failing (a named dedup is refused, starting nothing)."""
    for command in commands_of(fenced_block_after(REPLAY_WHILE_RUNNING)):
        recipe.run(command, timeout=150)
    data_dir = recipe.cwd / "synthstream-data"
    regenerated = [row for topic in ("synth.samples", "synth.rejected") for row in stored_rows(data_dir, topic)
                   if _instruction_version(row).endswith("+hot")]
    documents = {r["id"] for r in read_topic(recipe.env["SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS"], "synth.docs")}
    assert {row["root_id"] for row in regenerated} == documents, "not every regenerated instruction got through"

    beside = recipe.run("synthstream run --until-idle --no-progress")
    err = beside.stderr.decode()
    assert "dedup not run here" in err and "Unclosed" not in err and "Traceback" not in err
    refused = subprocess.run(["bash", "-c", "synthstream run --stage dedup --no-progress"], cwd=recipe.cwd,
                             env=recipe.env, capture_output=True, timeout=60)
    err = refused.stderr.decode()
    assert refused.returncode == 3 and "already its writer" in err, err
    assert "Unclosed" not in err and "Traceback" not in err
    for proc in recipe.background:
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode}:\n{recipe.logs()}"


def _instruction_version(row: dict) -> str:
    envelope = json.loads(row["envelope"]) if isinstance(row["envelope"], str) else row["envelope"]
    lineage = envelope.get("lineage") or envelope.get("data", {}).get("record", {}).get("lineage") or {}
    return next((s["version"] for s in lineage.get("stages", []) if s["stage"] == "instruction"), "")


# Links and snippets ---------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md", "deploy/README.md", "examples/README.md"])
def test_every_relative_link_exists_in_the_clone(doc: str):
    path = REPO / doc
    targets = [t.split("#")[0] for t in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", t)]
    for target in filter(None, targets):
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{doc} links to {target}, not in the clone"


# A path into the clone's own folders, as the docs name files (`producers/filters.py`, `examples/`).
REPO_PATH = re.compile(r"(?<![\w./<-])((?:consumers|producers|streamer|deploy|tests|bench|examples)/[\w./-]*)")


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md"])
def test_every_file_the_docs_name_in_the_clone_exists(doc: str):
    # Folders the programs write (listed in .gitignore, e.g. the tests' screenshots) are not in a clone.
    written = tuple(line.rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines() if "/" in line)
    missing = {p.rstrip(".") for p in REPO_PATH.findall((REPO / doc).read_text())
               if not (REPO / p.rstrip(".")).exists() and not p.startswith(written)}
    assert not missing, f"{doc} names files a clone does not have: {sorted(missing)}"


def toml_snippets() -> list[str]:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [b for b in blocks if "[stages" in b]


@pytest.mark.parametrize("snippet", toml_snippets())
def test_readme_stage_tables_load_through_the_settings(snippet: str, tmp_path: Path):
    from consumers import STAGES

    config = tmp_path / "synthstream.toml"
    config.write_text(snippet)
    settings = load_settings(config, env={})
    for name, table in tomllib.loads(snippet).get("stages", {}).items():
        effective = STAGES[name].bind(settings).settings
        for key, value in table.items():
            if key != "llm":  # a stage option or runtime key, where the README puts it: [stages.NAME]
                have = getattr(effective, key) if key in type(effective).model_fields else getattr(
                    effective.options, key)
                assert have == value, f"[stages.{name}] {key}"
