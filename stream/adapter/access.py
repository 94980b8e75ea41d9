"""Who may read the worker's HTTP endpoints: a bearer token, compared in constant time.

Profiles are personal data. With `ENGAGE_API_TOKEN` set, every route the worker serves answers
only requests carrying `Authorization: Bearer <token>`, except the probes and `/metrics`
(`OPEN_PATHS`), which stay open for orchestrators and Prometheus. The check is one aiohttp
middleware in front of the whole web application, so it also covers routes nobody thought of:
Faust's own views, a page added later, an unknown path. A request routed to the worker that
owns a customer keeps its headers, so the owner checks the same token again.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

UNAUTHORIZED = {"error": "unauthorized: send Authorization: Bearer <token>"}
#: The only paths that answer without the token: liveness, readiness and Prometheus.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def authorized(header: str | None, token: str | None) -> bool:
    """True when no token is configured, or `header` is `Bearer <token>` (constant time)."""
    if not token:
        return True
    if not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8"), token.encode("utf-8"))


def token_middleware(token: str) -> Any:
    """An aiohttp middleware answering 401 to any request outside `OPEN_PATHS` without the
    token: it runs before routing, so an unauthorised request never reaches a view, nor
    another worker."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or authorized(request.headers.get("Authorization"), token):
            return await handler(request)
        return web.json_response(
            UNAUTHORIZED, status=401, headers={"WWW-Authenticate": 'Bearer realm="engage"'}
        )

    return require_token


def guard(web_app: web.Application, token: str | None) -> None:
    """Put the token check in front of `web_app` once (Faust may initialise its web server
    more than once); nothing to do when no token is configured."""
    if not token or any(getattr(m, "is_token_guard", False) for m in web_app.middlewares):
        return
    middleware = token_middleware(token)
    middleware.is_token_guard = True
    web_app.middlewares.insert(0, middleware)
