"""Cross-origin requests from browser frontends: only from the origins a setting names.

`FAIRWAY_GATEWAY_CORS_ORIGINS` is a comma list of origins (`https://app.example.com`,
`http://localhost:3000`), or `*` for any. Empty (the default): no CORS headers, so a
browser lets no other origin read an answer.

The API is called with a bearer key in `Authorization`, never a cookie. A named origin
may still send credentials; `*` may not (browsers refuse a wildcard with credentials,
and a wildcard that reflected any origin with credentials would let every site use a
browser's credentials), so with `*` credentials are off.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.gateway.methods import http_routes

ANY = "*"
# What a browser sends as Origin: scheme, host, optional port; no path.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
# Request headers a frontend sends beyond the CORS-safelisted ones.
ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
# Response headers a frontend may read beyond the safelisted ones.
EXPOSE_HEADERS = ("Retry-After", "Allow")
# How long a browser may keep a preflight's answer.
MAX_AGE_S = 600


def parse_origins(value: str) -> tuple[str, ...]:
    """The origins in a comma list, as browsers spell them; ValueError naming a bad one."""
    origins: list[str] = []
    for raw in value.split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        if origin != ANY and not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"{raw.strip()!r} is not an origin: use scheme://host[:port] (no path), or * for any"
            )
        # Browsers send the scheme and host in lower case.
        origins.append(origin if origin == ANY else origin.lower())
    if ANY in origins and len(origins) > 1:
        raise ValueError("* allows every origin: list origins, or give * alone")
    return tuple(origins)


def install(app: FastAPI, origins: tuple[str, ...]) -> None:
    """Answer preflights and mark answers readable for `origins`; nothing when there are none.
    Call it once every router is included: preflights offer the methods the routes have."""
    if not origins:
        return
    methods = sorted({m for route in http_routes(app.routes) for m in route.methods or ()} - {"HEAD"})
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_credentials=ANY not in origins,
        allow_methods=methods,
        allow_headers=list(ALLOW_HEADERS),
        expose_headers=list(EXPOSE_HEADERS),
        max_age=MAX_AGE_S,
    )
