"""`synthstream` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from streamer.config import ConfigError, Settings, load_settings, mask_secrets

log = logging.getLogger("synthstream")


def main(argv: list[str] | None = None) -> int:
    # Model loading prints progress bars and hub notices; the encoder logs one line instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    # aiokafka logs every rebalance and retry at INFO/WARNING; ours say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    for noisy in ("httpx", "httpx2", "aiohttp.access", "sentence_transformers", "transformers",
                  "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"synthstream: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a clear one-line error instead of a traceback
        from aiokafka.errors import KafkaConnectionError

        from streamer.kafka.broker import BrokerError

        from streamer.state import StateLockedError

        if isinstance(exc, (KafkaConnectionError, BrokerError)):
            print(f"synthstream: Kafka unavailable: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, StateLockedError):
            print(f"synthstream: {exc}", file=sys.stderr)
            return 1
        from streamer.llm.client import LLMError

        if isinstance(exc, LLMError):
            print(f"synthstream: LLM endpoint failed: {exc}", file=sys.stderr)
            return 1
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthstream", description=__doc__)
    p.add_argument("--config", help="config file (default: ./synthstream.toml or $SYNTHSTREAM_CONFIG)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    b.add_argument("--host")
    b.add_argument("--port", type=int)
    b.set_defaults(handler=cmd_broker)

    r = sub.add_parser("run", help="run pipeline stages (all, or --stage NAME) and the sink")
    r.add_argument("--stage", action="append", metavar="NAME",
                   help="run only this stage ('sink' for the storage sink); repeatable")
    r.add_argument("--until-idle", action="store_true", help="exit once all input is processed")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(handler=cmd_run)

    rp = sub.add_parser("replay", help="make a stage reprocess its input history")
    rp.add_argument("stage", help="stage name")
    rp.add_argument("--from-beginning", action="store_true", required=True,
                    help="rewind the stage's consumer group to the start of its input topic")
    rp.set_defaults(handler=cmd_replay)

    f = sub.add_parser("feed", help="put documents, seed instructions or taxonomy disciplines on their topic")
    f.add_argument("kind", choices=["docs", "seeds", "taxonomy"])
    f.add_argument("paths", nargs="*", metavar="PATH",
                   help="docs/seeds: JSONL/Parquet file, directory, or - for stdin; taxonomy: one YAML file "
                        "(default: the shipped taxonomy)")
    f.add_argument("--only", nargs="+", metavar="NAME",
                   help="taxonomy: only these disciplines (a field or sub-field name selects all under it)")
    f.add_argument("--again", action="store_true",
                   help="taxonomy: also send disciplines already on glan.disciplines")
    f.add_argument("--text-field", help="field holding the text (docs: feed.text_field, seeds: feed.seed_text_field)")
    f.add_argument("--follow", action="store_true", help="keep watching for new files/lines until stopped")
    f.add_argument("--report", type=Path, help="write the bad-input report as JSON to this file")
    f.set_defaults(handler=cmd_feed)

    g = sub.add_parser("glan", help="GLAN tools (taxonomy-driven generation)")
    glan = g.add_subparsers(dest="glan_command", required=True, metavar="ACTION")
    pt = glan.add_parser("propose-taxonomy", help="ask the LLM to draft a taxonomy (YAML) for a person to review")
    pt.add_argument("--out", type=Path, required=True, help="YAML file to write")
    pt.add_argument("--fields", type=int, default=11, help="broad fields (default 11)")
    pt.add_argument("--sub-fields", type=int, default=3, help="sub-fields per field (default 3)")
    pt.add_argument("--disciplines", type=int, default=5, help="disciplines per sub-field (default 5)")
    pt.add_argument("--simulate", action="store_true", help="use the built-in LLM simulator (a dry run)")
    pt.set_defaults(handler=cmd_propose_taxonomy)

    e = sub.add_parser("export", help="write the stored samples as a chat-format dataset")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--format", choices=["jsonl", "parquet"], help="default: from the file suffix, else jsonl")
    e.add_argument("--method", help="only samples of this method")
    e.set_defaults(handler=cmd_export)

    c = sub.add_parser("config", help="configuration")
    c.add_argument("action", choices=["show"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=cmd_config)

    s = sub.add_parser("simulate-llm", help="serve the OpenAI-compatible LLM simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    s.add_argument("--rpm", type=int, default=0, help="requests/min limit (0 = none)")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--malformed-rate", type=float, default=0.0, help="share of replies that are broken JSON")
    s.add_argument("--invalid-rate", type=float, default=0.0, help="share of replies that are JSON breaking the schema")
    s.add_argument("--seed", type=int)
    s.set_defaults(handler=cmd_simulate)

    d = sub.add_parser("demo", help="offline end-to-end run of one method on bundled inputs")
    d.add_argument("--method", choices=["synthquestions", "glan"], default="synthquestions",
                   help="synthquestions: examples/ documents and seeds; glan: three taxonomy disciplines")
    d.add_argument("--docs", type=Path, help="synthquestions: documents to feed (default: examples/docs)")
    d.add_argument("--seeds", type=Path, help="synthquestions: seed instructions (default: examples/seeds.jsonl)")
    d.add_argument("--taxonomy", type=Path, help="glan: taxonomy file (default: the shipped one)")
    d.add_argument("--only", nargs="+", metavar="NAME",
                   help="glan: disciplines to run (default: Statistics, Contract law, Culinary arts)")
    d.add_argument("--out", type=Path,
                   help="dataset path (default: <data_dir>/demo/dataset.jsonl, glan: <data_dir>/demo-glan/...)")
    d.add_argument("--latency", type=float, default=0.2, help="simulator latency per request")
    d.set_defaults(handler=cmd_demo)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    from consumers import STAGES

    settings = load_settings(args.config)
    settings.check_stage_names(set(STAGES))
    for stage in STAGES.values():  # surface bad stage options before anything starts
        settings.stage_settings(stage.name, default_concurrency=stage.concurrency, options_model=stage.options_model)
    return settings


def _with_kafka(settings: Settings, purpose: str, body: Callable[[Settings], Any]) -> Any:
    from streamer.kafka.clients import kafka_available

    with kafka_available(settings, purpose) as ready:
        return asyncio.run(body(ready))


# Commands ---------------------------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from streamer.kafka.broker import EmbeddedBroker

    settings = _settings(args)
    broker = EmbeddedBroker(args.host or settings.broker.host, args.port or settings.broker.port)
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # Before the start: a client may connect (and a supervisor signal) as soon as the port opens.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker.start()
        print(f"embedded broker listening on {broker.bootstrap_servers} (pid {broker.process.pid}, topics in "
              f"memory); point other commands at it with SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS="
              f"{broker.bootstrap_servers}", file=sys.stderr, flush=True)
        while not stopping and broker.process and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.returncode if broker.process and broker.process.poll() is not None else 0
    finally:
        broker.stop()
    print("embedded broker stopped", file=sys.stderr)
    return code or 0


def cmd_run(args: argparse.Namespace) -> int:
    from consumers import PIPELINE, STAGES
    from streamer.worker import Worker

    settings = _settings(args)
    names = args.stage or []
    unknown = [n for n in names if n != "sink" and n not in STAGES]
    if unknown:
        print(f"synthstream: unknown stage {', '.join(unknown)}; stages: {', '.join([*STAGES, 'sink'])}",
              file=sys.stderr)
        return 2
    stages = [s for s in PIPELINE if not names or s.name in names]
    sink = not names or "sink" in names

    async def body(ready: Settings) -> None:
        await Worker(ready, stages, sink=sink, until_idle=args.until_idle, progress=not args.no_progress).run()

    _with_kafka(settings, "this run", body)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.kafka.admin import GroupBusyError, rewind_group

    settings = _settings(args)
    if args.stage not in STAGES:
        print(f"synthstream: unknown stage {args.stage}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if not settings.kafka.bootstrap_servers:
        print("synthstream: replay needs kafka.bootstrap_servers: a broker started for one command has no "
              "history to replay", file=sys.stderr)
        return 2
    stage, prefix = STAGES[args.stage], settings.kafka.topic_prefix
    try:
        offsets = asyncio.run(rewind_group(settings, f"{prefix}{stage.name}", f"{prefix}{stage.input_topic}"))
    except GroupBusyError as exc:
        print(f"synthstream: cannot replay {stage.name}: {exc}; stop its workers first (a stopped worker "
              f"leaves the group within about two session timeouts)", file=sys.stderr)
        return 3
    print(f"stage {stage.name} will reprocess {prefix}{stage.input_topic} from offsets {offsets} when it next "
          f"runs; records of a changed prompt or model get new ids and sit beside the old ones", file=sys.stderr)
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from producers.feed import feed

    if args.kind == "taxonomy":
        return cmd_feed_taxonomy(args)
    if not args.paths:
        print(f"synthstream: feed {args.kind} needs at least one PATH (a file, a directory, or - for stdin)",
              file=sys.stderr)
        return 2
    settings = _settings(args)
    if not settings.kafka.bootstrap_servers:
        print("synthstream: note: records fed to a broker started just for this command are gone when it "
              "exits; run `synthstream broker` and set SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS to keep them",
              file=sys.stderr)

    async def body(ready: Settings) -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await feed(ready, args.kind, args.paths, text_field=args.text_field, follow=args.follow, stop=stop)

    report = _with_kafka(settings, "this feed", body)
    if args.report:
        args.report.write_bytes(report.to_json())
    print(report.summary(), file=sys.stderr)
    return 0


def cmd_feed_taxonomy(args: argparse.Namespace) -> int:
    from producers.feed import feed_taxonomy
    from producers.taxonomy import DEFAULT_TAXONOMY, TaxonomyError, load_taxonomy

    if len(args.paths) > 1:
        print("synthstream: feed taxonomy takes one taxonomy file", file=sys.stderr)
        return 2
    path = Path(args.paths[0]) if args.paths else DEFAULT_TAXONOMY
    try:
        taxonomy = load_taxonomy(path)
        taxonomy.select(args.only)  # name errors before any broker starts
    except TaxonomyError as exc:
        print(f"synthstream: {exc}", file=sys.stderr)
        return 2
    settings = _settings(args)

    async def body(ready: Settings) -> Any:
        return await feed_taxonomy(ready, taxonomy, only=args.only, again=args.again)

    report = _with_kafka(settings, "this feed", body)
    print(report.summary(), file=sys.stderr)
    return 0


def cmd_propose_taxonomy(args: argparse.Namespace) -> int:
    from producers.taxonomy_proposal import ProposalShape, propose_taxonomy
    from streamer.llm.simulator import simulated_endpoint

    settings = _settings(args)
    if min(args.fields, args.sub_fields, args.disciplines) < 1:
        print("synthstream: --fields, --sub-fields and --disciplines must be at least 1", file=sys.stderr)
        return 2
    shape = ProposalShape(args.fields, args.sub_fields, args.disciplines)

    async def body() -> Any:
        if not args.simulate:
            return await propose_taxonomy(settings, args.out, shape)
        async with simulated_endpoint(settings.llm):
            print("synthstream: using the LLM simulator: the names will be nonsense", file=sys.stderr)
            return await propose_taxonomy(settings, args.out, shape)

    taxonomy = asyncio.run(body())
    fields = len({d.field for d in taxonomy.disciplines})
    print(f"wrote {args.out}: {fields} fields, {len(taxonomy.disciplines)} disciplines; review and edit it, "
          f"then `synthstream feed taxonomy {args.out}`", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from streamer.storage.export import export_samples

    settings = _settings(args)
    fmt = args.format or ("parquet" if args.out.suffix == ".parquet" else "jsonl")
    topic = f"{settings.kafka.topic_prefix}samples"
    result = export_samples(settings.storage.store_dir, topic, args.out, fmt, method=args.method)
    print(f"exported {result.rows} samples to {result.path} ({fmt}); "
          f"{result.skipped_duplicates} redelivered copies collapsed", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from consumers import STAGES

    settings = _settings(args)
    shown = mask_secrets(settings.model_dump(exclude={"stages"}))
    shown["stages"] = {
        name: mask_secrets(settings.stage_settings(
            name, default_concurrency=s.concurrency, options_model=s.options_model).model_dump())
        for name, s in STAGES.items()
    }
    if args.json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print(to_toml(shown))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamer.llm.simulator import SimulatorSettings, run_simulator

    run_simulator(SimulatorSettings(host=args.host, port=args.port, latency=args.latency, rpm=args.rpm,
                                    error_rate=args.error_rate, malformed_rate=args.malformed_rate,
                                    invalid_rate=args.invalid_rate, seed=args.seed))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import DemoInputs, run_demo

    settings = _settings(args)
    inputs = DemoInputs(method=args.method, docs=args.docs, seeds=args.seeds, taxonomy=args.taxonomy, only=args.only)
    return run_demo(settings, inputs, out=args.out, latency=args.latency)


# TOML output for `config show` --------------------------------------------------------
def to_toml(tree: dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in tree.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}" if value is not None else f"# {key} = (unset)")
    out = "\n".join(lines)
    for key, value in tables.items():
        child = to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
        if child:
            out = f"{out}\n\n{child}" if out else child
    return out


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else orjson.dumps(key).decode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return orjson.dumps(str(value)).decode()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
