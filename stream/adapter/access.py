"""Who may read profiles and KPIs over HTTP (SPEC §6): a bearer token, compared in constant time.

Profiles are personal data. With `ENGAGE_API_TOKEN` set, `/customers/...` and `/kpis` answer
only requests carrying `Authorization: Bearer <token>`; probes and `/metrics` stay open. A
request routed to the worker that owns a customer keeps its headers, so the owner checks the
same token again.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

UNAUTHORIZED = {"error": "unauthorized: send Authorization: Bearer <token>"}


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


def guarded(token: str | None) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Decorate a Faust page handler `(view, request, ...)`: 401 unless `authorized`."""

    def decorate(fun: Callable[..., Awaitable[Any]]) -> Any:
        if not token:
            return fun

        @functools.wraps(fun)
        async def handler(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if not authorized(request.headers.get("Authorization"), token):
                return view.json(
                    UNAUTHORIZED, status=401, headers={"WWW-Authenticate": 'Bearer realm="engage"'}
                )
            return await fun(view, request, *args, **kwargs)

        return handler

    return decorate
