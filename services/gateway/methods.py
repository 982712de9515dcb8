"""Which methods a path allows: the `Allow` header of a 405, and fixed paths kept whole.

Starlette answers a 405 from the first route whose path matched, naming only that route's
methods; `/v1/tenants/{tenant_id}` is two routes (GET and PATCH), so its 405 said
`Allow: GET`. Here every route is asked.

A fixed path is a resource of its own: `/v1/tenants/me` is GET only, although the template
`/v1/tenants/{tenant_id}` matches it too. `FixedPathMethods` answers 405 for a method the
fixed path lacks, instead of letting the template take it (PATCH /v1/tenants/me used to
try to change a tenant named "me").
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway import errors


def http_routes(routes: Sequence[BaseRoute]) -> list[RouteContext]:
    """Every HTTP route as it answers: FastAPI keeps an included router as one entry of
    `app.routes`, its routes (with the include's prefix) behind it."""
    return [c for c in iter_route_contexts(routes) if isinstance(c.original_route, Route) and c.methods]


def _templated(route: RouteContext) -> bool:
    return bool(route.param_convertors)


def allowed(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """The methods `path` answers, sorted; a fixed route's path allows only its own routes'."""
    matching = [r for r in http_routes(routes) if r.path_regex.match(path)]
    fixed = [r for r in matching if not _templated(r)]
    methods: set[str] = set()
    for route in fixed or matching:
        methods |= route.methods or set()
    return sorted(methods)


def method_not_allowed(method: str, path: str, allow: list[str]) -> JSONResponse:
    return errors.error_response(
        405, "method_not_allowed", f"{method} is not allowed on {path}; it allows {', '.join(allow)}.",
        {"Allow": ", ".join(allow)},
    )


def install(app: FastAPI) -> None:
    """Every 405 names all the methods of its path; fixed paths keep their own methods."""

    async def on_405(request: Request, _: Exception) -> JSONResponse:
        return method_not_allowed(request.method, request.url.path, allowed(request.app.routes, request.url.path))

    app.add_exception_handler(405, on_405)
    app.add_middleware(FixedPathMethods)


class FixedPathMethods:
    """405 for a method that a fixed path lacks, before a template route can take the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._fixed: dict[str, set[str]] | None = None

    def _table(self, scope: Scope) -> dict[str, set[str]]:
        # Built at the first request: every router is included by then.
        if self._fixed is None:
            fixed: dict[str, set[str]] = {}
            for route in http_routes(scope["app"].routes):
                if not _templated(route) and route.path is not None:
                    fixed.setdefault(route.path, set()).update(route.methods or ())
            self._fixed = fixed
        return self._fixed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            methods = self._table(scope).get(scope["path"])
            if methods is not None and scope["method"] not in methods:
                allow = allowed(scope["app"].routes, scope["path"])
                await method_not_allowed(scope["method"], scope["path"], allow)(scope, receive, send)
                return
        await self.app(scope, receive, send)
