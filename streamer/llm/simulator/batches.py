"""The simulator's batch API (OpenAI Batch) and its ledger of what was charged, online and batch.

Files: `POST /v1/files` (multipart, purpose `batch`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
`DELETE /v1/files/{id}`. Batches: `POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches`
(newest first, `limit`, `after`), `POST /v1/batches/{id}/cancel`. A batch goes validating → in_progress →
finalizing → completed over `BatchBehaviour.completion_seconds`; an invalid input file → failed; a batch
told to expire → expired with its finished requests in the output file and the rest in the error file
(`batch_expired`); a cancelled one → cancelling → cancelled likewise (`batch_cancelled`). Each request is
answered by the same code as `/v1/chat/completions` (so the same request gets the same answer online and
in a batch), and a share (`failure_rate`) is answered with an error instead, in the error file.

The ledger (`GET /ledger`) lists every request the simulator charged: online completions (keyed by a
digest of the request body) and batch requests (keyed by batch id and custom_id), with their tokens, so a
test can check that nothing was paid twice and that the client's reported cost matches. Only answered
requests are charged (200 online; a batch request in the output file), as providers bill.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from streamer.llm.simulator.batch_settings import BatchBehaviour

BATCH_ENDPOINT = "/v1/chat/completions"
STEPS = 20  # a batch's requests are answered in this many steps over its processing time


# --------------------------------------------------------------------------- ledger


@dataclass
class Charge:
    lane: str  # "online" | "batch"
    key: str  # online: digest of the request body; batch: custom_id
    model: str
    prompt_tokens: int
    completion_tokens: int
    batch_id: str | None = None
    at: float = field(default_factory=time.time)


class Ledger:
    def __init__(self) -> None:
        self.charges: list[Charge] = []

    def charge(self, lane: str, key: str, body: dict[str, Any], batch_id: str | None = None) -> None:
        usage = body.get("usage") or {}
        self.charges.append(Charge(lane, key, str(body.get("model") or ""), int(usage.get("prompt_tokens") or 0),
                                   int(usage.get("completion_tokens") or 0), batch_id))

    def as_dict(self) -> dict[str, Any]:
        totals: dict[str, dict[str, int]] = {}
        for c in self.charges:
            t = totals.setdefault(c.lane, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            t["requests"] += 1
            t["prompt_tokens"] += c.prompt_tokens
            t["completion_tokens"] += c.completion_tokens
        return {"charges": [c.__dict__ for c in self.charges], "totals": totals}


# --------------------------------------------------------------------------- files and batches


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


@dataclass
class Batch:
    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    status: str = "validating"
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, …
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancel_asked: bool = False
    expire: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": BATCH_ENDPOINT, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                     "cancelling_at", "cancelled_at"):
            out[name] = self.times.get(name)
        return out


class _Body:
    """What the completion handler reads of a request: its JSON body."""

    def __init__(self, body: Any) -> None:
        self._body = body

    async def json(self) -> Any:
        return self._body


Answer = Callable[[Any], Awaitable[web.Response]]


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}}, status=status)


class BatchAPI:
    def __init__(self, behaviour: BatchBehaviour, answer: Answer) -> None:
        self.behaviour = behaviour
        self.answer = answer  # the simulator's own completion handler, given an object with `json()`
        self.ledger = Ledger()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # files ------------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "expected multipart/form-data with 'file' and 'purpose'")
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            return _error(400, "'purpose' is required", "purpose")
        if upload is None or isinstance(upload, str):
            return _error(400, "'file' is required", "file")
        stored = StoredFile(f"file-sim-{uuid.uuid4().hex[:24]}", upload.filename or "upload", purpose,
                            upload.file.read())
        self.files[stored.id] = stored
        return web.json_response(stored.as_dict())

    def _file(self, request: web.Request) -> StoredFile | web.Response:
        stored = self.files.get(request.match_info["file_id"])
        return stored if stored is not None else _error(404, f"No such File object: {request.match_info['file_id']}",
                                                        "id")

    async def file_info(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        return stored if isinstance(stored, web.Response) else web.json_response(stored.as_dict())

    async def file_content(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        if isinstance(stored, web.Response):
            return stored
        return web.Response(body=stored.content, content_type="application/jsonl")

    async def file_delete(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        if isinstance(stored, web.Response):
            return stored
        del self.files[stored.id]
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    def _put_file(self, purpose: str, lines: list[dict[str, Any]], name: str) -> str:
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        stored = StoredFile(f"file-sim-{uuid.uuid4().hex[:24]}", name, purpose, content)
        self.files[stored.id] = stored
        return stored.id

    # batches ----------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if body.get("endpoint") != BATCH_ENDPOINT:
            return _error(400, f"the simulator batches only {BATCH_ENDPOINT}", "endpoint")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or not all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())):
            return _error(400, "metadata: at most 16 string values of up to 512 characters", "metadata")
        stored = self.files.get(str(body.get("input_file_id")))
        if stored is None:
            return _error(400, f"No such File object: {body.get('input_file_id')}", "input_file_id")
        if stored.purpose != "batch":
            return _error(400, "the input file's purpose must be 'batch'", "input_file_id")
        now = int(time.time())
        batch = Batch(f"batch_sim_{uuid.uuid4().hex[:24]}", stored.id, "24h", metadata, now, now + 24 * 3600)
        if self.behaviour.expire_next > 0:
            self.behaviour.expire_next -= 1
            batch.expire = True
        self.batches[batch.id] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch, stored.content))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch.as_dict())

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No such Batch object: {request.match_info['batch_id']}", "id")
        return web.json_response(batch.as_dict())

    async def list(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "limit must be an integer", "limit")
        newest_first = sorted(self.batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)
        ids = [b.id for b in newest_first]
        after = request.query.get("after")
        start = ids.index(after) + 1 if after in ids else 0
        page = newest_first[start:start + limit]
        return web.json_response({"object": "list", "data": [b.as_dict() for b in page],
                                  "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                                  "has_more": start + limit < len(ids)})

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No such Batch object: {request.match_info['batch_id']}", "id")
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'.")
        if not batch.cancel_asked:
            batch.cancel_asked = True
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(time.time())
        return web.json_response(batch.as_dict())

    # one batch's life -------------------------------------------------------------------------
    async def _run(self, batch: Batch, content: bytes) -> None:
        seconds = self.behaviour.completion_seconds
        await asyncio.sleep(seconds * 0.05)
        requests, problem = self._validate(content)
        if problem is not None:
            batch.status = "failed"
            batch.times["failed_at"] = int(time.time())
            batch.errors = {"object": "list", "data": [{"code": "invalid_request", "message": problem,
                                                        "param": None, "line": None}]}
            return
        batch.total = len(requests)
        if batch.cancel_asked:
            return self._close(batch, [], requests, "cancelled")
        batch.status = "in_progress"
        batch.times["in_progress_at"] = int(time.time())
        stop_at = round(len(requests) * self.behaviour.expire_keep) if batch.expire else len(requests)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        step = max(1, -(-len(requests) // STEPS))
        done = 0
        while done < stop_at and not batch.cancel_asked:
            chunk = requests[done:min(stop_at, done + step)]
            for line in await asyncio.gather(*(self._answer(batch, r) for r in chunk)):
                (outputs if line["response"]["status_code"] == 200 else errors).append(line)
                if line["response"]["status_code"] == 200:
                    batch.completed += 1
                else:
                    batch.failed += 1
            done += len(chunk)
            await asyncio.sleep(seconds * 0.9 / STEPS)
        if batch.cancel_asked:
            return self._close(batch, outputs, [*errors, *self._unrun(requests[done:], "batch_cancelled")],
                               "cancelled")
        if batch.expire:
            return self._close(batch, outputs, [*errors, *self._unrun(requests[done:], "batch_expired")], "expired")
        batch.status = "finalizing"
        batch.times["finalizing_at"] = int(time.time())
        await asyncio.sleep(seconds * 0.05)
        self._close(batch, outputs, errors, "completed")

    def _close(self, batch: Batch, outputs: list[dict[str, Any]], errors: list[dict[str, Any]], status: str) -> None:
        if outputs:
            batch.output_file_id = self._put_file("batch_output", outputs, f"{batch.id}_output.jsonl")
        if errors:
            batch.error_file_id = self._put_file("batch_output", errors, f"{batch.id}_error.jsonl")
        batch.failed = len(errors)
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())

    def _validate(self, content: bytes) -> tuple[list[dict[str, Any]], str | None]:
        if len(content) > self.behaviour.max_bytes:
            return [], f"the input file is larger than {self.behaviour.max_bytes} bytes"
        requests: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                return [], f"line {number}: not valid JSON"
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                return [], f"line {number}: 'custom_id' must be a string"
            if line["custom_id"] in seen:
                return [], f"line {number}: duplicate custom_id {line['custom_id']!r}"
            if line.get("method") != "POST" or line.get("url") != BATCH_ENDPOINT:
                return [], f"line {number}: method must be POST and url {BATCH_ENDPOINT}"
            if not isinstance(line.get("body"), dict):
                return [], f"line {number}: 'body' must be an object"
            seen.add(line["custom_id"])
            requests.append(line)
        if not requests:
            return [], "the input file holds no requests"
        if len(requests) > self.behaviour.max_requests:
            return [], f"more than {self.behaviour.max_requests} requests in one batch"
        return requests, None

    async def _answer(self, batch: Batch, request: dict[str, Any]) -> dict[str, Any]:
        custom_id = request["custom_id"]
        line_id = f"batch_req_{uuid.uuid4().hex[:24]}"
        if self._fails(batch.id, custom_id):
            body = {"error": {"message": "simulated batch request failure: the model server errored",
                              "type": "server_error", "code": "server_error"}}
            return {"id": line_id, "custom_id": custom_id, "error": None,
                    "response": {"status_code": 500, "request_id": line_id, "body": body}}
        while True:
            response = await self.answer(_Body(request["body"]))
            if response.status != 429:  # the batch lane has its own capacity; the online limit only delays it
                break
            await asyncio.sleep(0.05)
        body = json.loads(response.body) if isinstance(response.body, bytes) else {}
        if response.status == 200:
            self.ledger.charge("batch", custom_id, body, batch.id)
        return {"id": line_id, "custom_id": custom_id, "error": None,
                "response": {"status_code": response.status, "request_id": line_id, "body": body}}

    def _fails(self, batch_id: str, custom_id: str) -> bool:
        rate = self.behaviour.failure_rate
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.behaviour.seed}|{batch_id}|{custom_id}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big")).random() < rate

    @staticmethod
    def _unrun(requests: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
        message = {"batch_expired": "This request could not be executed before the completion window expired.",
                   "batch_cancelled": "This request was not executed because the batch was cancelled."}[code]
        return [{"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": r["custom_id"], "response": None,
                 "error": {"code": code, "message": message}} for r in requests]

    # ledger and behaviour over HTTP -----------------------------------------------------------
    async def ledger_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.ledger.as_dict())

    async def behaviour_view(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                self.behaviour = BatchBehaviour.model_validate({**self.behaviour.model_dump(), **changes})
            except (ValueError, TypeError) as exc:
                return _error(400, f"invalid batch behaviour: {exc}"[:300])
        return web.json_response(self.behaviour.model_dump())

    @web.middleware
    async def charge_online(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Charges every answered `/v1/chat/completions` request to the online lane."""
        if request.path != BATCH_ENDPOINT or request.method != "POST":
            return await handler(request)
        raw = await request.read()  # kept by aiohttp: the handler reads it again
        response = await handler(request)
        if response.status == 200 and isinstance(getattr(response, "body", None), bytes):
            try:
                body = json.loads(response.body)
            except ValueError:
                return response
            self.ledger.charge("online", hashlib.sha256(raw).hexdigest()[:32], body)
        return response

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


BATCHES_KEY = web.AppKey("simulator_batches", BatchAPI)


def install(app: web.Application, behaviour: BatchBehaviour, answer: Answer) -> BatchAPI:
    """Adds the batch routes, the ledger and the online charging to the simulator's app."""
    api = BatchAPI(behaviour, answer)
    app[BATCHES_KEY] = api
    app.middlewares.append(api.charge_online)
    app.router.add_post("/v1/files", api.upload)
    app.router.add_get("/v1/files/{file_id}", api.file_info)
    app.router.add_get("/v1/files/{file_id}/content", api.file_content)
    app.router.add_delete("/v1/files/{file_id}", api.file_delete)
    app.router.add_post("/v1/batches", api.create)
    app.router.add_get("/v1/batches", api.list)
    app.router.add_get("/v1/batches/{batch_id}", api.retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", api.cancel)
    app.router.add_get("/ledger", api.ledger_view)
    app.router.add_get("/batch-behaviour", api.behaviour_view)
    app.router.add_post("/batch-behaviour", api.behaviour_view)

    async def stop(_app: web.Application) -> None:
        await api.close()

    app.on_cleanup.append(stop)
    return api
