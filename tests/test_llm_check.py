"""`synthstream llm check` through the real CLI: against the simulator playing the servers' dialects
(json_schema refused as llama-cpp-python does, json_object only, a template that drops the system
message, a context window) and against a real llama-cpp-python server: the dialect, the context
length and the system role it finds, and the settings it prints."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from helpers import CLI
from streamer.llm import local_server


def llm_check(base_url: str, model: str, *args: str) -> tuple[str, dict]:
    """The check's report and the settings it printed (the TOML after "settings to use:")."""
    env = {"SYNTHSTREAM_LLM__BASE_URL": base_url, "SYNTHSTREAM_LLM__MODEL": model, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*CLI, "--log-level", "warning", "llm", "check", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report, _, toml = done.stdout.partition("settings to use:\n")
    return report, tomllib.loads(toml)


@pytest.mark.parametrize("flags, dialect, window, role", [
    (("--latency", "0.3"), "json_schema", None, "system"),
    (("--response-format", "json_object_schema", "--context-tokens", "2048"), "json_object_schema", 2048, "system"),
    (("--response-format", "json_object", "--drop-system"), "json_object", None, "user"),
])
def test_check_finds_the_simulated_servers_dialect_context_and_system_role(start_simulator, flags, dialect,
                                                                            window, role):
    sim = start_simulator(*flags)
    report, settings = llm_check(sim.url, "synthstream-simulator")
    assert "models listed: synthstream-simulator" in report
    assert settings == {"llm": {"structured": dialect, "system_role": role, **({"context_tokens": window} if window else {})}}
    if dialect != "json_schema":  # the rungs above, each with the server's own words
        said = {"json_object_schema": "Input should be 'text' or 'json_object'",
                "json_object": "is not supported with this model"}[dialect]
        assert f"json_schema not usable (HTTP {500 if dialect == 'json_object_schema' else 400}" in report
        assert said in report
    if role == "user":
        assert "system role: dropped by the chat template" in report
    if window is None:
        assert "context length: unknown (the server did not say" in report
    if flags[:1] == ("--latency",):  # the simulator answers requests together: no max_in_flight to set
        assert re.search(r"requests at once: two took (0\.\d|1\.[0-3])x as long as one: answered together", report), report


def test_check_of_one_stage_prints_that_stages_table(start_simulator):
    sim = start_simulator("--response-format", "json_object_schema")
    report, settings = llm_check(sim.url, "synthstream-simulator", "--stage", "judge")
    assert "used by: judge" in report
    assert settings == {"stages": {"judge": {"llm": {"structured": "json_object_schema", "system_role": "system"}}}}


def test_check_against_a_real_llama_cpp_python_server(llama_server):
    report, settings = llm_check(llama_server.base_url, local_server.MODEL_NAME)
    print(report)
    assert f"models listed: {local_server.MODEL_NAME}" in report
    # json_schema is answered 500 in its words; json_object with a schema is the dialect it speaks.
    assert "json_schema not usable (HTTP 500" in report and "Input should be 'text' or 'json_object'" in report
    assert settings["llm"]["structured"] == "json_object_schema"
    # It cuts max_tokens to fit without a word, but refuses a prompt longer than its window, saying it.
    assert settings["llm"]["context_tokens"] == llama_server.n_ctx
    assert settings["llm"]["system_role"] == "system"  # SmolLM2's chat template keeps the system message
    assert settings["llm"]["max_in_flight"] == 1 and "answered one after the other" in report
    assert "tokens/s" in report and "tokens/s unknown" not in report
