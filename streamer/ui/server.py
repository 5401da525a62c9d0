"""The console's web server: routes, the access token, start and clean stop.

Bound to a loopback address the console is as private as the machine; bound anywhere else every
request must carry the access token: once as `?token=…` (the printed URL), then as the cookie the
answer sets.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from streamer.config import Settings
from streamer.ui import api
from streamer.ui.live import LiveStatus
from streamer.ui.reports import LiveReport

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "synthstream_ui_token"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class UiOptions:
    host: str = "127.0.0.1"
    port: int = 8050
    token: str | None = None  # required from every request when set
    interval: float = 2.0  # seconds between status samples


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def access_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """The token the server requires (None on loopback without one) and whether it was made here."""
    if given:
        return given, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


def token_middleware(token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
            response = await handler(request)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return response
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), token.encode()):
            return await handler(request)
        return web.Response(status=401, text="synthstream ui: open the URL with ?token=… that `synthstream ui` "
                                             "printed (or set the synthstream_ui_token cookie)\n")
    return check


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def make_app(settings: Settings, options: UiOptions) -> web.Application:
    app = web.Application(middlewares=[token_middleware(options.token)])
    app["settings"] = settings
    app["stopping"] = asyncio.Event()
    app["live"] = LiveStatus(settings, options.interval)
    app["report"] = LiveReport(settings)
    app["redrive_lock"] = asyncio.Lock()
    app.router.add_get("/", index)
    app.router.add_get("/api/live", app["live"].stream)
    api.add_routes(app)
    app.router.add_static("/static/", STATIC)
    app.on_startup.append(_start_sampling)
    app.on_shutdown.append(_stop_sampling)
    return app


async def _start_sampling(app: web.Application) -> None:
    app["sampling"] = asyncio.create_task(app["live"].run(app["stopping"]))


async def _stop_sampling(app: web.Application) -> None:
    app["stopping"].set()  # ends the sampler and every open event stream
    await app["live"].wake()
    task: asyncio.Task = app["sampling"]
    try:
        await asyncio.wait_for(task, 10)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    app["report"].close()


async def serve(settings: Settings, options: UiOptions, stop: asyncio.Event, on_ready: Callable[[str], None]) -> None:
    """Serve until `stop` is set; `on_ready` gets the URL (without the token) once the port listens."""
    app = make_app(settings, options)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        port = runner.addresses[0][1] if options.port == 0 else options.port
        shown = f"[{options.host}]" if ":" in options.host else options.host
        on_ready(f"http://{shown}:{port}/")
        await stop.wait()
    finally:
        await runner.cleanup()
