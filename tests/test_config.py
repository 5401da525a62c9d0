"""Configuration: file + environment, clear errors naming the key, secrets masked."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel, ConfigDict

from streamer.cli import main
from streamer.config import ConfigError, load_settings


def write(tmp_path, text: str):
    path = tmp_path / "synthstream.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path):
    settings = load_settings(env={"SYNTHSTREAM_CONFIG": str(write(tmp_path, ""))})
    assert settings.kafka.bootstrap_servers is None
    assert settings.kafka.topic_prefix == "synth."
    # No client-side pacing unless asked for: the server's 429s and the in-flight cap limit a run.
    assert settings.llm.requests_per_minute == 0 and settings.llm.max_in_flight == 512


def test_file_values_and_env_overrides_with_precedence(tmp_path):
    path = write(tmp_path, '[kafka]\npartitions = 6\n[llm]\nmodel = "from-file"\ntemperature = 0.2\n')
    env = {"SYNTHSTREAM_LLM__MODEL": "from-env", "SYNTHSTREAM_KAFKA__TOPIC_PARTITIONS__DOCS": "12",
           "OPENAI_BASE_URL": "http://llm.local/v1"}
    settings = load_settings(path, env=env)
    assert settings.kafka.partitions == 6
    assert settings.kafka.topic_partitions == {"docs": 12}
    assert settings.llm.model == "from-env"
    assert settings.llm.temperature == 0.2
    assert settings.llm.base_url == "http://llm.local/v1"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "[kafka]\nbootstrap = 'x:9092'\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap \(.*synthstream\.toml\): unknown key 'bootstrap'"):
        load_settings(path, env={})


def test_bad_value_from_env_names_the_variable():
    with pytest.raises(ConfigError, match=r"llm\.temperature \(env SYNTHSTREAM_LLM__TEMPERATURE\)"):
        load_settings(env={"SYNTHSTREAM_LLM__TEMPERATURE": "9"})
    with pytest.raises(ConfigError, match="SYNTHSTREAM_KAFKA:"):
        load_settings(env={"SYNTHSTREAM_KAFKA": "1"})


def test_invalid_toml_and_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[kafka\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: int = 5


def test_stage_settings_merge_llm_defaults_and_validate_stage_options(tmp_path):
    path = write(tmp_path, '[llm]\nmodel = "base"\nrequests_per_minute = 120\n'
                           '[stages.judge]\nconcurrency = 3\nthreshold = 6\n[stages.judge.llm]\nmodel = "cheap"\n')
    settings = load_settings(path, env={})
    judge = settings.stage_settings("judge", options_model=_Options)
    assert (judge.concurrency, judge.options.model_dump()) == (3, {"threshold": 6})
    assert (judge.llm.model, judge.llm.requests_per_minute) == ("cheap", 120)
    other = settings.stage_settings("other", default_concurrency=9)
    assert (other.concurrency, other.llm.model) == (9, "base")

    bad = load_settings(write(tmp_path, "[stages.judge]\nthreshhold = 6\n"), env={})
    with pytest.raises(ConfigError, match=r"stages\.judge\.threshhold .*unknown key"):
        bad.stage_settings("judge", options_model=_Options)
    with pytest.raises(ConfigError, match="unknown stage 'judge'"):
        bad.check_stage_names({"standin"})


def test_api_key_from_file_and_env(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-123\n")
    settings = load_settings(env={"SYNTHSTREAM_LLM__API_KEY_FILE": str(key_file)})
    assert settings.llm.resolved_api_key() == "sk-from-file-123"
    assert load_settings(env={"OPENAI_API_KEY": "sk-env-456"}).llm.resolved_api_key() == "sk-env-456"


def test_config_show_masks_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("SYNTHSTREAM_KAFKA__SASL_PASSWORD", "kafka-secret-pw")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "sk-very-secret-value" not in out and "kafka-secret-pw" not in out
    assert 'api_key = "**** (set)"' in out and "[stages.judge.llm]" in out
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["llm"]["api_key"] == "**** (set)"
    assert shown["stages"]["judge"]["llm"]["api_key"] == "**** (set)"


def test_config_show_says_what_a_default_means_and_stays_valid_toml(tmp_path, monkeypatch, capsys):
    import tomllib

    monkeypatch.chdir(tmp_path)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    # The rate-limit default is stated where it is shown, in the main [llm] table and every stage's.
    assert re.search(r"^requests_per_minute = 0  # .*0 = none", out, flags=re.MULTILINE)
    assert out.count("requests_per_minute = 0  # ") == 1 + out.count(".llm]")
    assert tomllib.loads(out)["llm"]["requests_per_minute"] == 0


def test_cli_reports_config_error_with_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[stages.judge]\nconcurency = 4\n")
    assert main(["config", "show"]) == 2
    assert "stages.judge.concurency" in capsys.readouterr().err


def test_config_show_prints_stage_options_where_the_loader_takes_them(tmp_path, monkeypatch, capsys):
    """`config show` output, written as the configuration file, loads back to the same configuration:
    a stage's options in [stages.NAME] (the loader refuses a [stages.NAME.options] table)."""
    import tomllib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHSTREAM_STAGES__SITUATION__EXAMPLES", "5")
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert ".options]" not in shown
    assert tomllib.loads(shown)["stages"]["situation"]["examples"] == 5
    assert re.search(r"^examples = 5  # attributed seeds shown per document$", shown, flags=re.MULTILINE)
    monkeypatch.delenv("SYNTHSTREAM_STAGES__SITUATION__EXAMPLES")
    write(tmp_path, shown)
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out == shown
    assert main(["config", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["situation"]["examples"] == 5
