"""`GET /`: the operator's live status page; `GET /v1/stats/overview`: everything it shows.

The page, its script and its style (`services/gateway/status/static/`, shipped in the package)
hold no data and are served without a key, with a content security policy that lets them load
nothing from anywhere but this gateway. The script asks for the admin key once, keeps it in the
tab's sessionStorage and polls `/v1/stats/overview` (admin only) every second: a visitor
without the key sees an empty page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.auth import AdminKey, Stubs
from services.gateway.errors import ApiError
from services.gateway.status.overview import Overview

router = APIRouter()

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("services.gateway.status").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def status_page() -> Response:
    return _serve("index.html")


@router.get("/status/{name}", include_in_schema=False)
async def status_asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", f"There is no status page file {name!r}.")
    return _serve(name)


@router.get("/v1/stats/overview", tags=["operations"])
async def overview(request: Request, who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Everything the status page shows (admin): budgets with their use now (last 10 s) and
    over the last minute, tenants with their queues and credits, jobs with their counts,
    recent failures, predictors connected, and the charts' series over the last 5 minutes.
    Gathered at most once a second per gateway, whoever asks."""
    state = request.app.state
    found: Overview | None = getattr(state, "status_overview", None)
    if found is None:
        found = state.status_overview = Overview()
    # Names the admin on the scheduler calls, as every route names its caller.
    metadata: tuple[tuple[str, str], ...] = getattr(who, "metadata", ())
    return await found.snapshot(up, metadata)
