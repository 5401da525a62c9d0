"""Configuration: one optional TOML file plus environment overrides.

Precedence (lowest to highest): built-in defaults, `synthstream.toml` (or the file named by
`SYNTHSTREAM_CONFIG` / `--config`), `OPENAI_API_KEY` / `OPENAI_BASE_URL`, and
`SYNTHSTREAM_<SECTION>__<KEY>` variables (`__` separates nesting levels, values are parsed as
TOML literals when they parse, else taken as strings).

Every unknown key or bad value is reported as a `ConfigError` naming the key and where it
was set, never as a traceback.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "SYNTHSTREAM_"
DEFAULT_CONFIG_FILE = "synthstream.toml"


class ConfigError(Exception):
    """A configuration problem a user must fix; the message names the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        None, description="host:port[,host:port]; empty means: start the embedded broker"
    )
    topic_prefix: str = "synth."
    partitions: int = Field(4, ge=1)
    replication_factor: int | None = Field(None, ge=1, description="copies of each topic synthstream creates; "
                                           "unset: the cluster's default.replication.factor (1 on one broker)")
    topic_partitions: dict[str, int] = Field(
        default_factory=dict, description="per-topic partition counts, by unprefixed name"
    )
    client_id: str = "synthstream"
    # How fast the group notices a dead or departed worker; brokers enforce a minimum
    # (Kafka: 6000 ms by default). The embedded broker uses 3000/500 unless these are set.
    session_timeout_ms: int = Field(10_000, ge=1000, description="against the embedded broker or `synthstream "
                                    "broker` (tansu) 2000 unless set: tansu holds a join for half of it")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="against tansu 500 unless set")
    fetch_max_wait_ms: int = Field(100, ge=0, description="how long a fetch waits for new records: each hop "
                                   "between stages can cost up to this much (tansu always waits it out)")
    unavailable_timeout: float = Field(
        60.0, gt=0, description="seconds a worker waits for an unreachable broker before it exits non-zero"
    )
    # How stored files, snapshots and positions recognise a recreated topic (streamer.kafka.incarnation).
    topic_identity: Literal["auto", "topic-ids", "marker"] = "auto"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None


class BrokerSettings(_Section):
    """The embedded single-machine broker (`synthstream broker`)."""

    host: str = "127.0.0.1"
    port: int = Field(9092, ge=0, le=65535)


class LLMSettings(_Section):
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; none = simulator in demo")
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = None
    requests_per_minute: int = Field(0, ge=0, description="client-side request pacing per endpoint and model; "
                                     "0 = none (the server's 429s still pause every caller)")
    tokens_per_minute: int = Field(0, ge=0, description="0 = no token budget")
    max_in_flight: int = Field(512, ge=1, description="requests in flight per endpoint and model, all stages "
                               "of a process together")
    timeout: float = Field(60.0, gt=0, description="seconds a request may take at least; longer when its max_tokens "
                           "at the endpoint's tokens/s needs more (see tokens_per_second)")
    tokens_per_second: float | None = Field(None, gt=0, description="the endpoint's generation speed per request, "
                                            "for sizing timeouts (max_tokens / this x 2); unset: measured from "
                                            "replies (the slowest of the last 16)")
    max_retries: int = Field(4, ge=0, description="retries for 429, 5xx, timeouts, truncation")
    reasks: int = Field(2, ge=0, description="re-asks after output that fails the schema or the content checks")
    structured: Literal["auto", "json_schema", "json_object_schema", "json_object", "prompt"] = Field(
        "auto", description="how JSON output is asked for: response_format json_schema; json_object with a schema "
        "(llama-cpp-python); json_object; or the prompt alone (below json_schema the schema is in the prompt too); "
        "auto starts at json_schema and steps down when the server refuses or ignores it, once per endpoint and model")
    max_tokens_cap: int = Field(4096, ge=1, description="a reply cut at max_tokens (finish_reason=length) is asked "
                                "once more with max_tokens doubled up to this, then dead-lettered")
    context_tokens: int | None = Field(None, ge=1, description="the model's context window, used when a server's "
                                       "context-length error does not say it; unset: each overflow halves the prompt")
    system_role: Literal["auto", "system", "user"] = Field(
        "auto", description="system: send the system message as it is; user: merge it into the first user message "
        "(for chat templates that drop or refuse it); auto: one probe per endpoint and model finds out")
    cache: bool = True
    # The batch lane (streamer.llm.batch): calls gathered into batch files at the provider's batch price.
    mode: Literal["online", "batch"] = Field("online", description="online: one request per call; batch: calls "
                                             "gathered into the provider's batch API (half price, answers within "
                                             "its 24 h window)")
    batch_max_requests: int = Field(1000, ge=1, le=50_000, description="most requests in one batch file")
    batch_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024,
                                 description="largest batch file in bytes")
    batch_max_age: float = Field(30.0, gt=0, description="seconds the oldest gathered call waits before its "
                                 "batch goes out however small, so a trickle still goes out")
    batch_poll_interval: float = Field(30.0, gt=0, description="seconds between polls of submitted batches")
    batch_max_in_flight: int = Field(5000, ge=1, description="records in flight per process for a stage in "
                                     "batch mode (its `concurrency` is for online calls)")

    def resolved_api_key(self) -> str:
        """The key from the settings, else from api_key_file; never logged."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            try:
                return self.api_key_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"llm.api_key_file: cannot read {self.api_key_file}: {exc.strerror}") from exc
        # Local servers (simulator, vLLM, Ollama) accept any key; the openai client needs one.
        return "not-needed"


class RuntimeSettings(_Section):
    drain_timeout: float = Field(30.0, gt=0, description="seconds to finish in-flight work on SIGTERM")
    commit_interval: float = Field(1.0, gt=0)
    retry_backoff: float = Field(0.5, ge=0, description="base delay between a stage's attempts")
    max_poll_records: int = Field(500, ge=1)
    idle_grace: float = Field(0.2, ge=0, description="seconds every input must stay consumed, with nothing in "
                              "flight, before `run --until-idle` ends (longer when other processes still feed it)")
    rebalance_wait: float = Field(10.0, ge=0, description="seconds to let revoked partitions finish")

    @property
    def drain_budget(self) -> float:
        """Of drain_timeout, the part for finishing in-flight records; the rest is for committing and leaving."""
        return max(0.5, self.drain_timeout - min(2.0, self.drain_timeout / 4))


class RunSettings(_Section):
    """How `run --until-idle` judges the run it made."""

    max_dlq_share: float = Field(0.5, ge=0, le=1, description="`run --until-idle` exits non-zero when a stage "
                                 "dead-lettered more than this share of the records it was given (or all of "
                                 "them; 1 = only then)")


class FiltersSettings(_Section):
    """Document filters `feed docs` applies before any LLM call (producers/filters.py). A rejected
    document goes to the `rejected` topic with the filter, the measured value and the threshold."""

    enabled: bool = Field(True, description="false: feed every document as it is (no filters, no split)")
    min_chars: int = Field(200, ge=0, description="fewer characters: rejected (error pages, empty stubs)")
    min_words: int = Field(50, ge=0, description="fewer words (tokens with a letter or digit): rejected; too little "
                           "to ground an instruction on (search, 404 and module-index pages)")
    max_chars: int = Field(6000, ge=0, description="longer documents are split or truncated (long_documents); "
                           "6000 characters ≈ 1500 tokens, the document's least share of the situation stage's "
                           "prompt (token_budget 3000 × min_document_share 0.5); 0 = no limit")
    long_documents: Literal["split", "truncate"] = Field(
        "split", description="split: parts cut by sections (headings, then paragraphs; never inside code or "
                             "tables), each opening with its heading path, each its own document (meta.part, meta.parts, "
                             "meta.document_id); "
                             "truncate: the first part only (meta.truncated)")
    languages: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the languages to keep "
                                 "(detected with lingua, recorded in meta.language); empty: keep all, detect none")
    max_navigation_chars: float = Field(0.6, ge=0, le=1, description="most share of prose characters in link-list "
                                        "entries (list items and table rows of at most 10 words ending no sentence): "
                                        "index, module-index and table-of-contents pages")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="most '#' and ellipses per prose word (Gopher)")
    min_terminal_punctuation_lines: float = Field(0.12, ge=0, le=1, description="least share of prose lines "
                                                  "(hard-wrapped lines joined into their paragraph) ending in . ! ? or "
                                                  "a closing quote (FineWeb; a closing bracket alone ends none): link "
                                                  "lists end none")
    max_duplicate_lines: float = Field(0.3, ge=0, le=1, description="most share of prose characters in lines "
                                       "(paragraphs) repeating an earlier one (Gopher's character fraction)")
    max_top_2gram_chars: float = Field(0.2, ge=0, le=1, description="most share of prose characters in the most "
                                       "frequent word pair (Gopher)")
    max_bullet_lines: float = Field(0.9, ge=0, le=1, description="most share of prose lines that are list items "
                                    "(Gopher): navigation-only pages")
    min_alpha_words: float = Field(0.8, ge=0, le=1, description="least share of prose words with a letter (Gopher)")
    min_mean_word_length: float = Field(3.0, ge=0, description="shortest mean word length (Gopher)")
    near_duplicates: bool = Field(True, description="reject a document whose 5-word shingles nearly match one fed "
                                  "before (MinHash-LSH; the index persists under data_dir/state)")
    near_duplicate_threshold: float = Field(0.7, gt=0, le=1, description="estimated Jaccard similarity at which a "
                                            "document counts as a copy (a page with another date line and footer: "
                                            "0.85 and up on the test crawl; different pages: under 0.05)")
    max_mean_word_length: float = Field(10.0, ge=0, description="longest mean word length (Gopher)")


class FeedSettings(_Section):
    text_field: str = Field("text", description="field holding a document's text in JSONL/Parquet")
    seed_text_field: str = Field("instruction", description="field holding a seed's instruction")
    max_doc_bytes: int = Field(1_000_000, ge=1)
    max_record_bytes: int = Field(64 << 20, ge=1, description="most bytes one web-archive record may decompress to "
                                  "(headers and payload); checked while reading: a larger one (a gzip bomb) is "
                                  "skipped with its file and offset, and the rest of that file with it")
    max_file_bytes: int = Field(16 << 30, ge=1, description="most bytes one compressed input file (.gz, web archive) "
                                "may decompress to; checked while reading: beyond it the file's reading stops, "
                                "said with its file and offset")
    filters: FiltersSettings = Field(default_factory=FiltersSettings)


class StorageSettings(_Section):
    data_dir: Path = Path("synthstream-data")
    sink_batch_size: int = Field(500, ge=1)
    sink_flush_interval: float = Field(2.0, gt=0)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def cache_path(self) -> Path:
        return self.data_dir / "llm-cache.sqlite"


class MetricsSettings(_Section):
    """The Prometheus endpoint every worker process (`run`, `demo`) can serve."""

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes it to the network")
    port: int | None = Field(None, ge=0, le=65535, description="unset: no endpoint; 0: any free port (logged)")


class ModelPrice(_Section):
    """What a model costs, in US dollars per million tokens."""

    input: float = Field(ge=0, description="per million prompt tokens")
    output: float = Field(ge=0, description="per million completion tokens (reasoning included)")
    batch_discount: float = Field(0.5, ge=0, le=1, description="share taken off both in the batch lane")


# List prices (USD per million tokens) of common models, batch at half price; `[prices."MODEL"]` adds or
# replaces entries. A dated snapshot (gpt-4o-mini-2024-07-18) takes its family's price. The simulator is
# priced as gpt-4o-mini, so the offline demo shows what such a run would cost.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
    "o4-mini": ModelPrice(input=1.10, output=4.40),
    "synthstream-simulator": ModelPrice(input=0.15, output=0.60),
}


class StageSettings(_Section):
    """Effective settings of one stage: runtime knobs, its LLM, and its own options."""

    concurrency: int = Field(16, ge=1, description="records in flight per process")
    attempts: int = Field(3, ge=1, description="tries before a record goes to dlq")
    prompt_file: Path | None = Field(None, description="TOML prompt override (version, system, user)")
    snapshot_every: int = Field(1000, ge=1, description="records between state snapshots (stateful stages)")
    version: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$", coerce_numbers_to_str=True,
        description="run the stage under this version: new output ids and its own consumer group",
    )
    llm: LLMSettings = Field(default_factory=LLMSettings)
    options: Any = Field(None, description="the stage's options, an instance of its options model")

    @property
    def records_in_flight(self) -> int:
        """Records processed at once per process: `concurrency`, or in batch mode `llm.batch_max_in_flight`
        (records wait for their batch, so many more must be in flight to fill one)."""
        return max(self.concurrency, self.llm.batch_max_in_flight) if self.llm.mode == "batch" else self.concurrency


class Settings(_Section):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="per model, over DEFAULT_PRICES")
    # Raw per-stage tables; resolved against each stage's declaration by `stage_settings`.
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # Where each key came from, for error messages (not part of the configuration itself).
    _sources: dict[str, str] = {}

    def stage_settings(
        self, name: str, *, default_concurrency: int = 16, options_model: type[BaseModel] | None = None
    ) -> StageSettings:
        raw = dict(self.stages.get(name, {}))
        llm_raw = {**self.llm.model_dump(exclude_unset=True), **raw.pop("llm", {})}
        runtime_keys = {k: raw.pop(k) for k in ("concurrency", "attempts", "prompt_file", "snapshot_every", "version")
                        if k in raw}
        runtime_keys.setdefault("concurrency", default_concurrency)
        options_model = options_model or _NoOptions
        try:
            options = options_model.model_validate(raw)
            return StageSettings(llm=LLMSettings.model_validate(llm_raw), options=options, **runtime_keys)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=f"stages.{name}", sources=self._sources)) from None

    def check_stage_names(self, known: set[str]) -> None:
        for name in self.stages:
            if name not in known:
                src = self._sources.get(f"stages.{name}", "configuration")
                raise ConfigError(
                    f"stages.{name} ({src}): unknown stage '{name}'; known stages: {', '.join(sorted(known))}"
                )


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build the effective settings from defaults, the config file and the environment."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}

    file_path = Path(path) if path else Path(env.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG_FILE))
    explicit = path is not None or f"{ENV_PREFIX}CONFIG" in env
    if file_path.exists():
        try:
            with file_path.open("rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: not valid TOML: {exc}") from None
        _record_sources(raw, str(file_path), sources)
    elif explicit:
        raise ConfigError(f"config file {file_path} does not exist")

    # The usual OpenAI variables fill in only what the file leaves unset.
    llm = raw.setdefault("llm", {})
    if not isinstance(llm, dict):
        raise ConfigError(f"llm ({file_path}): must be a table")
    for var, key in (("OPENAI_API_KEY", "api_key"), ("OPENAI_BASE_URL", "base_url")):
        if env.get(var) and key not in llm:
            llm[key] = env[var]
            sources[f"llm.{key}"] = f"env {var}"

    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var == f"{ENV_PREFIX}CONFIG":
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"env {var}: expected {ENV_PREFIX}<SECTION>__<KEY> (e.g. {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS)"
            )
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"env {var}: {'.'.join(parts[:-1])} is not a table")
        node[parts[-1]] = _parse_env_value(value)
        sources[".".join(parts)] = f"env {var}"

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources=sources)) from None
    settings._sources = sources
    return settings


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _record_sources(node: dict[str, Any], source: str, out: dict[str, str], prefix: str = "") -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        out[path] = source
        if isinstance(value, dict):
            _record_sources(value, source, out, f"{path}.")


def _describe(exc: ValidationError, *, prefix: str = "", sources: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        origin = _source_of(key, sources)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{err['loc'][-1]}'"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        lines.append(f"{key}{f' ({origin})' if origin else ''}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _source_of(key: str, sources: dict[str, str]) -> str | None:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return None


def mask_secrets(value: Any) -> Any:
    """A JSON-able copy of a settings dump with every secret replaced by a marker."""
    if isinstance(value, SecretStr):
        return "**** (set)"
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
