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
from streamer.cli.logs import configure as configure_logging

log = logging.getLogger("synthstream")


def main(argv: list[str] | None = None) -> int:
    # Model loading prints progress bars and hub notices; the encoder logs one line instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
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
        from streamer.kafka.clients import TopicPartitionsError
        from streamer.kafka.health import BROKER_VERDICTS
        from streamer.metrics.endpoint import MetricsServerError
        from streamer.state.manager import StateLockedError
        from streamer.storage.sink import StoreConflictError

        if isinstance(exc, (KafkaConnectionError, BrokerError)):
            print(f"synthstream: Kafka unavailable: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, BROKER_VERDICTS):
            print(f"synthstream: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, (StateLockedError, MetricsServerError, StoreConflictError, TopicPartitionsError)):
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
    _add_metrics_options(r)
    r.set_defaults(handler=cmd_run)

    rp = sub.add_parser("replay", help="make a stage reprocess its input history")
    rp.add_argument("stage", help="stage name")
    _add_start_options(rp, required=True, offset_help="PARTITION:OFFSET items (partitions not named keep "
                                                      "their position), or one OFFSET for every partition")
    rp.add_argument("--version", metavar="V",
                    help="instead of rewinding the stage's group, run the stage now under version V (new "
                         "output ids, own consumer group <stage>@V) until it has caught up")
    rp.add_argument("--no-progress", action="store_true", help="with --version: no progress display")
    rp.set_defaults(handler=cmd_replay)

    t = sub.add_parser("tap", help="print a topic's records, live, without joining any consumer group")
    t.add_argument("topic", help="topic name without the prefix, e.g. situations, instructions, dlq")
    _add_start_options(t, required=False, offset_help="OFFSET for every partition, or PARTITION:OFFSET items "
                                                      "(only those partitions)")
    t.add_argument("--follow", action="store_true",
                   help="keep printing new records until stopped (default start then: the current end)")
    t.add_argument("--where", action="extend", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="only records whose dotted path matches, e.g. data.stage=instruction method=glan")
    t.add_argument("--json", action="store_true", help="one JSON envelope per line, as stored on the topic")
    t.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    t.set_defaults(handler=cmd_tap)

    q = sub.add_parser("dlq", help="dead letters: list, show, redrive")
    dlq = q.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    ql = dlq.add_parser("list", help="dead letters with stage, error, attempts and whether redriven")
    qs = dlq.add_parser("show", help="one dead letter, whole, as JSON")
    qs.add_argument("ids", nargs=1, metavar="ID", help="dead-letter id (a unique prefix is enough)")
    qr = dlq.add_parser("redrive", help="put dead letters' inputs back on their stage's input topic, once each")
    qr.add_argument("ids", nargs="*", metavar="ID", help="only these dead letters (default: all selected)")
    for action in (ql, qr):
        action.add_argument("--stage", help="only dead letters of this stage")
        action.add_argument("--where", action="extend", nargs="+", default=[], metavar="FIELD=VALUE",
                            help="only dead letters whose dotted path matches, e.g. data.error_type=LLMOutputError")
    q.set_defaults(handler=cmd_dlq)

    st = sub.add_parser("status", help="per stage: lag, records/s in and out, in flight, dlq, rejected, LLM use")
    st.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0,
                    help="seconds between the two samples rates come from (default 2)")
    st.add_argument("--json", action="store_true", help="as JSON (with --watch: one object per line)")
    st.set_defaults(handler=cmd_status)

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
    f.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="docs/seeds: do not send inputs that already ended in the store (as a sample, rejection or "
                        "dead letter); after losing the broker, feeding the same inputs again sends exactly the "
                        "unfinished work (default: on)")
    f.add_argument("--follow", action="store_true", help="keep watching for new files/lines until stopped")
    f.add_argument("--report", type=Path, help="write the bad-input report as JSON to this file")
    f.add_argument("--no-progress", action="store_true")
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

    rep = sub.add_parser("report", help="charts and an HTML summary of the stored dataset")
    rep.add_argument("--out", type=Path, help="directory to write (default: <data_dir>/report)")
    rep.add_argument("--method", help="only samples (and their rejections) of this method")
    rep.add_argument("--data-dir", type=Path, help="the data to report on (default: storage.data_dir)")
    rep.add_argument("--sample-size", type=int, default=1000,
                     help="instructions embedded for the diversity figures (default 1000)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the diversity sample (default 0)")
    rep.set_defaults(handler=cmd_report)

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
    _add_metrics_options(d)
    d.set_defaults(handler=cmd_demo)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    from consumers import STAGES

    settings = load_settings(args.config)
    settings.check_stage_names(set(STAGES))
    for stage in STAGES.values():  # surface bad stage options before anything starts
        stage.settings_in(settings)
    return settings


def _add_metrics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics on this port (0: any free port, logged); default: metrics.port")
    p.add_argument("--metrics-host", metavar="HOST", help="address to bind (default: metrics.host, 127.0.0.1)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _serve_metrics(args: argparse.Namespace, settings: Settings) -> Any:
    """The metrics endpoint of this process, as configured and overridden by the command line."""
    from streamer.metrics.endpoint import serve_metrics

    if args.metrics_host is not None:
        settings.metrics.host = args.metrics_host
    if args.metrics_port is not None:
        settings.metrics.port = args.metrics_port
    return serve_metrics(settings)


def _add_start_options(p: argparse.ArgumentParser, *, required: bool, offset_help: str) -> None:
    start = p.add_mutually_exclusive_group(required=required)
    start.add_argument("--from-beginning", action="store_true", help="from the start of the topic")
    start.add_argument("--offset", nargs="+", metavar="P:N", help=offset_help)
    start.add_argument("--since", metavar="TIME", help="from the first record at or after TIME: ISO time "
                                                      "(2025-05-01T12:00) or an age like 30s, 10m, 2h, 1d")


def _start_at(args: argparse.Namespace, default: str = "beginning") -> Any:
    """The start position the options name; PositionError (one line) if they are malformed."""
    from streamer.kafka.positions import StartAt

    return StartAt.from_args(from_beginning=args.from_beginning, offset=args.offset, since=args.since,
                             default=default)


def _needs_running_broker(settings: Settings, command: str) -> bool:
    if settings.kafka.bootstrap_servers:
        return True
    print(f"synthstream: {command} needs kafka.bootstrap_servers: a broker started for one command has no "
          f"topics to read", file=sys.stderr)
    return False


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
        print(f"embedded broker listening on {broker.bootstrap_servers} (pid {broker.process.pid}; topics in "
              f"memory, gone when it stops: the data dir keeps what was stored); point other commands at it with "
              f"SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}", file=sys.stderr, flush=True)
        while not stopping and broker.process and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.returncode if broker.process and broker.process.poll() is not None else 0
    finally:
        broker.stop()
    print("embedded broker stopped", file=sys.stderr)
    return code or 0


def cmd_run(args: argparse.Namespace) -> int:
    from consumers import PIPELINE, STAGES
    from streamer.runtime.worker import Worker

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

    with _serve_metrics(args, settings):
        _with_kafka(settings, "this run", body)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from streamer.ops.status import run_status

    settings = _settings(args)
    if args.interval <= 0:
        print("synthstream: --interval must be more than 0 seconds", file=sys.stderr)
        return 2
    if not _needs_running_broker(settings, "status"):
        return 2
    asyncio.run(run_status(settings, interval=args.interval, watch=args.watch, as_json=args.json))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.ops import replay
    from streamer.kafka.admin import GroupBusyError
    from streamer.kafka.positions import PositionError

    settings = _settings(args)
    if args.stage not in STAGES:
        print(f"synthstream: unknown stage {args.stage}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.version is not None and not _valid_version(args.version):
        print(f"synthstream: --version {args.version!r}: use letters, digits, '.', '_' and '-' (at most 40)",
              file=sys.stderr)
        return 2
    if not _needs_running_broker(settings, "replay"):
        return 2
    stage = STAGES[args.stage]
    try:
        start = _start_at(args)
        if args.version is None:
            done = asyncio.run(replay.reset(settings, stage, start))
        else:
            done = asyncio.run(replay.run_version(settings, stage, start, args.version,
                                                  progress=not args.no_progress))
    except (PositionError, replay.ReplayError) as exc:
        print(f"synthstream: cannot replay {stage.name}: {exc}", file=sys.stderr)
        return 2
    except GroupBusyError as exc:
        print(f"synthstream: cannot replay {stage.name}: {exc}; stop its workers first (a stopped worker "
              f"leaves the group within about two session timeouts), or replay under a new --version, "
              f"which has a group of its own", file=sys.stderr)
        return 3
    if args.version is None:
        print(f"stage {stage.name}: group {done.group} rewound on {done.topic} to {start.describe()} "
              f"({done.offsets_text()}); it reprocesses them when it next runs. Outputs get new ids beside the "
              f"old ones only if the stage's identity ({done.identity}) changed since", file=sys.stderr)
    else:
        print(f"stage {stage.name} ran under version {args.version} (identity {done.identity}) in group "
              f"{done.group} from {start.describe()} ({done.offsets_text()}): {done.done} input records, "
              f"{done.produced} new records with new ids beside the old ones, {done.dead} dead letters. "
              f"Downstream stages take them when they run; to keep new input under this version set "
              f"[stages.{stage.name}] version = \"{args.version}\" (its workers continue in {done.group})",
              file=sys.stderr)
    return 0


def _valid_version(version: str) -> bool:
    from pydantic import ValidationError

    from streamer.config import StageSettings

    try:
        StageSettings(version=version)
    except ValidationError:
        return False
    return True


def cmd_tap(args: argparse.Namespace) -> int:
    from streamer.kafka.positions import PositionError
    from streamer.kafka.reader import UnknownTopicError
    from streamer.ops.query import Where
    from streamer.ops.tap import TapRequest, known_topic, tap

    settings = _settings(args)
    try:
        request = TapRequest(known_topic(args.topic, settings.kafka.topic_prefix),
                             _start_at(args, default="end" if args.follow else "beginning"), follow=args.follow,
                             wheres=[Where.parse(w) for w in args.where], as_json=args.json, limit=args.limit)
    except ValueError as exc:  # PositionError is one
        print(f"synthstream: {exc}", file=sys.stderr)
        return 2
    if not _needs_running_broker(settings, "tap"):
        return 2

    async def body() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await tap(settings, request, stop)

    try:
        shown = asyncio.run(body())
    except (UnknownTopicError, PositionError) as exc:
        print(f"synthstream: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tap … | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"tap: {shown} records", file=sys.stderr)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.ops import dlq
    from streamer.ops.query import Where

    settings = _settings(args)
    stage = getattr(args, "stage", None)
    if stage is not None and stage not in STAGES:
        print(f"synthstream: unknown stage {stage}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        wheres = [Where.parse(w) for w in getattr(args, "where", [])]
    except ValueError as exc:
        print(f"synthstream: {exc}", file=sys.stderr)
        return 2
    if not _needs_running_broker(settings, "dlq"):
        return 2
    try:
        entries = dlq.select(asyncio.run(dlq.load(settings)), stage=stage, wheres=wheres, ids=getattr(args, "ids", None))
    except dlq.UnknownDeadLetterError as exc:
        print(f"synthstream: {exc}", file=sys.stderr)
        return 2
    if args.dlq_command == "list":
        print("\n".join(dlq.table_lines(entries)))
        pending = sum(1 for e in entries if e.redrive is None)
        print(f"{len(entries)} dead letters: {pending} pending, {len(entries) - pending} redriven", file=sys.stderr)
        if any(e.stored_only for e in entries):
            print(dlq.STORED_ONLY_NOTE, file=sys.stderr)
    elif args.dlq_command == "show":
        for entry in entries:
            print(orjson.dumps(entry.envelope.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
            print(dlq.status_line(entry), file=sys.stderr)
    else:
        report = asyncio.run(dlq.redrive(settings, entries))
        for marker in report.sent:
            print(dlq.redrive_line(marker))
        for entry in report.unusable:
            print(f"synthstream: not redriven {entry.envelope.id}: its input is not a synthstream record",
                  file=sys.stderr)
        print(f"redrove {len(report.sent)} dead letters to their stages' input topics"
              f"{f' ({report.collapsed} redelivered copies sent once)' if report.collapsed else ''}; "
              f"{report.already} were redriven before and were not sent again; the stages process them when "
              f"they run", file=sys.stderr)
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
    _note_if_ephemeral(settings)

    async def body(ready: Settings) -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await feed(ready, args.kind, args.paths, text_field=args.text_field, follow=args.follow, stop=stop,
                          progress=not args.no_progress, resume=args.resume)

    report = _with_kafka(settings, "this feed", body)
    if args.report:
        args.report.write_bytes(report.to_json())
    print(report.summary(), file=sys.stderr)
    return 0


def _note_if_ephemeral(settings: Settings) -> None:
    if not settings.kafka.bootstrap_servers:
        print("synthstream: note: records fed to a broker started just for this command are gone when it "
              "exits; run `synthstream broker` and set SYNTHSTREAM_KAFKA__BOOTSTRAP_SERVERS to keep them",
              file=sys.stderr)


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
    _note_if_ephemeral(settings)

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


def cmd_report(args: argparse.Namespace) -> int:
    from consumers import STAGES
    from streamer.report import ReportError, ReportOptions, headline, make_report

    settings = _settings(args)
    if args.sample_size < 2:
        print("synthstream: --sample-size must be at least 2 (diversity compares pairs)", file=sys.stderr)
        return 2
    data_dir = args.data_dir or settings.storage.data_dir
    embed = STAGES["embed"].settings_in(settings)
    options = ReportOptions(store_dir=data_dir / "store", prefix=settings.kafka.topic_prefix,
                            out=args.out or data_dir / "report", method=args.method, sample_size=args.sample_size,
                            seed=args.seed, encoder_model=embed.options["model"])
    try:
        figures = make_report(options)
    except ReportError as exc:
        print(f"synthstream: {exc}", file=sys.stderr)
        return 1
    print(headline(figures, options.out), file=sys.stderr)
    print(options.out / "index.html")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from consumers import STAGES

    settings = _settings(args)
    shown = mask_secrets(settings.model_dump(exclude={"stages"}))
    shown["stages"] = {
        name: mask_secrets(stage.settings_in(settings).model_dump()) for name, stage in STAGES.items()
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
    from streamer.ops.demo import DemoInputs, run_demo

    settings = _settings(args)
    inputs = DemoInputs(method=args.method, docs=args.docs, seeds=args.seeds, taxonomy=args.taxonomy, only=args.only)
    with _serve_metrics(args, settings):
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
