"""`GET /docs`: Swagger UI over /openapi.json, from files the gateway serves itself.

FastAPI's own /docs loads Swagger UI from a CDN, so it was a blank page without internet
access (or behind a proxy that blocks the CDN). The files come from the
`swagger-ui-bundle-v2` package (Swagger UI 5, which reads OpenAPI 3.1, as FastAPI writes
it; `swagger-ui-bundle` still ships 4.x). Nothing on the page is fetched from elsewhere:
the spec validator's badge (an image from swagger.io) is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

router = APIRouter(include_in_schema=False)

ASSETS = Path(str(swagger_ui_path))
# The version is in the path (swagger-ui-5.31.0), so a new one is a new URL: cached for good.
PREFIX = f"/docs/{ASSETS.name}"
# Only what the page loads (and the maps a browser's developer tools ask for).
FILES = frozenset(
    name
    for base in ("swagger-ui-bundle.js", "swagger-ui.css")
    for name in (base, f"{base}.map")
) | {"favicon-32x32.png", "favicon-16x16.png"}
CACHE_FOREVER = "public, max-age=31536000, immutable"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Fairway API",
        swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{PREFIX}/favicon-32x32.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": False},
    )


@router.get(PREFIX + "/{name}")
async def swagger_asset(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404)
    return FileResponse(ASSETS / name, headers={"Cache-Control": CACHE_FOREVER})
