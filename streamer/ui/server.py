"""The console's web server: routes, the access token, the guards, start and clean stop.

Bound to a loopback address the console is as private as the machine; bound anywhere else every
request must carry the access token: once as `?token=…` (the printed URL), then as the cookie the
answer sets. Whatever the bind, the console shows crawled (untrusted) text and runs on a machine
whose browser visits other sites, so every answer carries a strict Content-Security-Policy, only
the Host names it is bound for are served (a DNS-rebinding page has its own), and a state-changing
request must be JSON and prove it comes from the console's own page.
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
from streamer.storage import store
from streamer.ui import api
from streamer.ui.live import LiveStatus
from streamer.ui.reports import LiveReport

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "synthstream_ui_token"
CSRF_HEADER = "X-Synthstream-Csrf"
# Crawled text is shown on every page: no script but the console's own files, no plugins, no
# <base> rewriting links, no framing by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Server": "synthstream",  # not the library and its version
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class UiOptions:
    host: str = "127.0.0.1"
    port: int = 8050
    token: str | None = None  # required from every request when set
    interval: float = 2.0  # seconds between status samples
    allowed_hosts: tuple[str, ...] = ()  # names a reverse proxy forwards under, besides the bound ones


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


def host_name(host_header: str) -> str:
    """`Host` without its port, lower case, IPv6 without brackets ("[::1]:8050" → "::1")."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_middleware(options: UiOptions) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Serve only the Host names the console is bound for (against DNS rebinding: a page of another
    site whose name is made to resolve to this address still sends its own name as Host)."""
    allowed = LOOPBACK_NAMES | {host_name(options.host)} | {host_name(h) for h in options.allowed_hosts}
    # Bound to every address, the machine's own addresses are all bound ones; an IP literal is never
    # a rebound name, so any is fine there.
    wildcard = options.host in ("0.0.0.0", "::", "")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = host_name(request.headers.get("Host", ""))
        if name in allowed or (wildcard and is_ip_literal(name)):
            return await handler(request)
        return web.Response(status=421, text=f"synthstream ui: not served under the name {name!r}; open it by "
                                             "the address it is bound to (or name it with --allowed-host)\n")
    return check


def same_origin_middleware(csrf_token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A state-changing request must be JSON (a cross-site form or no-cors fetch cannot send that) and
    show it comes from the console's own page: an Origin equal to the Host it asked (checked above
    against the bound names), or the page's anti-CSRF token in a header. Else 403, nothing done."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS:
            return await handler(request)
        if request.content_type != "application/json":
            return forbidden("a state-changing request must be application/json")
        origin = request.headers.get("Origin")
        offered = request.headers.get(CSRF_HEADER, "")
        from_console = origin is not None and origin_host(origin) == request.headers.get("Host", "").lower()
        if from_console or (offered and hmac.compare_digest(offered.encode(), csrf_token.encode())):
            return await handler(request)
        return forbidden(f"not from the console's own page (its Origin, or the {CSRF_HEADER} header)")
    return check


def origin_host(origin: str) -> str | None:
    scheme, _, rest = origin.lower().partition("://")
    return rest.rstrip("/") if scheme in ("http", "https") else None


def forbidden(reason: str) -> web.Response:
    return web.json_response({"error": f"refused: {reason}"}, status=403)


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)  # every answer: pages, files, errors


async def index(request: web.Request) -> web.Response:
    # The anti-CSRF token reaches the page in a meta tag: readable by the console's own script only
    # (another origin cannot read this answer, and the Host check keeps a rebound name out).
    page = (STATIC / "index.html").read_text().replace("{{csrf_token}}", request.app["csrf_token"])
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


def make_app(settings: Settings, options: UiOptions) -> web.Application:
    csrf_token = secrets.token_urlsafe(24)
    app = web.Application(middlewares=[host_middleware(options), token_middleware(options.token),
                                       same_origin_middleware(csrf_token)])
    app.on_response_prepare.append(add_security_headers)
    app["csrf_token"] = csrf_token
    app["settings"] = settings
    app["stopping"] = asyncio.Event()
    app["live"] = LiveStatus(settings, options.interval)
    app["report"] = LiveReport(settings)
    app["store_index"] = store.IdIndex(settings.storage.store_dir)  # any record by id, without a scan
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
