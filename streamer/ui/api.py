"""The console's JSON endpoints: each calls the operation the matching command uses (ops.dlq,
ops.query, the topic reader, the report) and answers JSON."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from consumers import FEEDERS, PIPELINE, TOPICS
from consumers.topology import graph as pipeline_graph
from streamer.config import Settings
from streamer.kafka.positions import FROM_BEGINNING, PositionError, StartAt
from streamer.kafka.reader import UnknownTopicError, observe
from streamer.ops import dlq
from streamer.ops.query import Where, decode_value
from streamer.ops.tap import known_topic
from streamer.ui.chain import recent_samples, sample_chain
from streamer.ui.reports import LiveReport, rejected_groups
from streamer.ui.topics import Browse, browse, find_record, stored_topics

MAX_LIMIT = 500


def as_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def problem(status: int, message: str) -> web.Response:
    return as_json({"error": message}, status=status)


def settings_of(request: web.Request) -> Settings:
    return request.app["settings"]


# Topics and records ---------------------------------------------------------------------------
async def graph(_request: web.Request) -> web.Response:
    """The pipeline as the stage declarations say it is: the console draws its graph from this."""
    return as_json(pipeline_graph(PIPELINE, FEEDERS))


async def topics(request: web.Request) -> web.Response:
    settings = settings_of(request)
    return as_json({"topics": list(TOPICS), "prefix": settings.kafka.topic_prefix,
                    "stored": stored_topics(settings)})


def browse_request(topic: str, query: Any) -> Browse:
    """The browser's query string as a `Browse`; ValueError (PositionError is one) if malformed."""
    start_kind = query.get("start", "newest")
    start: StartAt | None
    if start_kind == "newest":
        start = None
    elif start_kind == "beginning":
        start = FROM_BEGINNING
    elif start_kind == "offset":
        start = StartAt.from_args(offset=query.get("offset", "").split())
    elif start_kind == "since":
        start = StartAt.from_args(since=query.get("since", "").strip())
    else:
        raise ValueError(f"start {start_kind!r}: newest, beginning, offset or since")
    wheres = [where for line in query.getall("where", []) for where in Where.parse_line(line)]
    limit = min(max(int(query.get("limit", "50")), 1), MAX_LIMIT)
    return Browse(topic, start, wheres, query.get("q", "").strip(), limit)


async def topic_records(request: web.Request) -> web.Response:
    settings = settings_of(request)
    try:
        wanted = browse_request(known_topic(request.match_info["topic"], settings.kafka.topic_prefix),
                                request.query)
    except (ValueError, PositionError) as exc:
        return problem(400, str(exc))
    try:
        return as_json(await browse(settings, wanted))
    except UnknownTopicError as exc:
        return problem(404, str(exc))


async def record(request: web.Request) -> web.Response:
    found = await find_record(settings_of(request), request.app["store_index"], request.match_info["id"])
    if found is None:
        return problem(404, f"no record with id {request.match_info['id']} in the store or on the topics")
    return as_json(found)


async def samples(request: web.Request) -> web.Response:
    return as_json({"samples": await asyncio.to_thread(recent_samples, settings_of(request))})


async def sample(request: web.Request) -> web.Response:
    chain = await sample_chain(settings_of(request), request.app["store_index"], request.match_info["id"])
    if chain is None:
        return problem(404, f"no sample with id {request.match_info['id']} in the store or on the samples topic")
    return as_json(chain)


# Dead letters and rejections ------------------------------------------------------------------
def letter_row(entry: dlq.Entry) -> dict[str, Any]:
    return {"id": entry.envelope.id, "stage": entry.letter.stage, "error_type": entry.letter.error_type,
            "attempts": entry.letter.attempts, "error": entry.letter.error, "status": entry.status,
            "stored_only": entry.stored_only, "input_topic": entry.letter.input_topic,
            "input_id": (entry.letter.input or {}).get("id") if isinstance(entry.letter.input, dict) else None,
            "failed_at": entry.letter.failed_at, "simulated": entry.envelope.simulated,
            "redrive": None if entry.redrive is None else entry.redrive.model_dump(mode="json")}


async def dead_letters(request: web.Request) -> web.Response:
    entries = await dlq.load(settings_of(request))
    return as_json({"letters": [letter_row(e) for e in entries],
                    "pending": sum(1 for e in entries if e.redrive is None)})


async def redrive(request: web.Request) -> web.Response:
    """POST {"id": …}: that dead letter's input back on its stage's input topic, once (ops.dlq)."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    letter_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(letter_id, str) or not letter_id:
        return problem(400, 'expected {"id": "<dead letter id>"}')
    settings = settings_of(request)
    async with request.app["redrive_lock"]:  # two clicks never send one letter twice
        try:
            entries = dlq.select(await dlq.load(settings), ids=[letter_id])
        except dlq.UnknownDeadLetterError as exc:
            return problem(404, str(exc))
        report = await dlq.redrive(settings, entries)
    return as_json({"sent": [dlq.redrive_line(m) for m in report.sent], "already": report.already,
                    "unusable": [e.envelope.id for e in report.unusable]})


async def rejected(request: web.Request) -> web.Response:
    settings = settings_of(request)
    on_topic: list[dict[str, Any]] = []
    records = observe(settings, settings.kafka.topic_prefix + "rejected", FROM_BEGINNING, follow=False,
                      stop=asyncio.Event())
    async with contextlib.aclosing(records):
        with contextlib.suppress(UnknownTopicError):
            async for rec in records:
                on_topic.append(decode_value(rec.value))
    return as_json(await asyncio.to_thread(rejected_groups, settings, on_topic))


# Report ---------------------------------------------------------------------------------------
async def report(request: web.Request) -> web.Response:
    live: LiveReport = request.app["report"]
    return as_json(await live.get(fresh=request.query.get("fresh") == "1"))


async def chart(request: web.Request) -> web.StreamResponse:
    path = request.app["report"].chart(request.match_info["name"])
    if path is None:
        return problem(404, "no such chart (yet): open the report first")
    return web.FileResponse(path, headers={"Cache-Control": "no-store"})


async def batches_view(request: web.Request) -> web.Response:
    """The batch lane's batches (as `synthstream batch list`) and what the pipeline's calls cost."""
    from streamer.ops import batches
    from streamer.ops.costs import run_costs

    settings = settings_of(request)
    views = await asyncio.to_thread(batches.load, settings)
    await batches.refresh(settings, views)
    costs = await asyncio.to_thread(run_costs, settings)
    return as_json({"batches": [v.to_json() for v in reversed(views)], "open": sum(not v.row.collected for v in views),
                    "total_usd": costs["total_usd"], "batch_usd": costs["batch_usd"]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/topics", topics)
    app.router.add_get("/api/topics/{topic}", topic_records)
    app.router.add_get("/api/records/{id}", record)
    app.router.add_get("/api/samples", samples)
    app.router.add_get("/api/samples/{id}", sample)
    app.router.add_get("/api/dlq", dead_letters)
    app.router.add_post("/api/dlq/redrive", redrive)
    app.router.add_get("/api/rejected", rejected)
    app.router.add_get("/api/batches", batches_view)
    app.router.add_get("/api/report", report)
    app.router.add_get("/api/report/charts/{name}", chart)
