"""The OpenAPI document at /openapi.json, made to say what the server does.

FastAPI's own document knew nothing of the bearer key, declared its `{"detail": ...}`
body for the 422 it adds to every route (the gateway answers `{"error": ...}`), and
listed no other error. Here, after FastAPI writes it:

- a bearer security scheme, required everywhere but on the routes that take no key;
- every error status a route can answer, each with the error envelope as its body: the
  ones that follow from what the route depends on (a key: 401, 429 for a tenant's request
  rate, 502 and 503 when the scheduler cannot check the key; an admin-only or tenant-only
  key: 403; a JSON body: 400, 413, 422; parameters: 422; a path naming a resource: 404),
  plus those a route declares itself (`responses=documented(...)`);
- path and query strings without the NUL character, which every route refuses in them;
- whole-number bounds as whole numbers (FastAPI's document model turns them into floats,
  and 2**63 - 1 into 2**63, a value the server refuses).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext

from services.gateway import job_schema
from services.gateway.auth import admin_principal, current_principal, tenant_principal
from services.gateway.errors import dependants
from services.gateway.methods import http_routes
from services.gateway.schemas import INT64_MAX, NO_NUL, Error

SCHEME = "bearer"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again; absent when waiting cannot help",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
    }
}

# What each error status means, unless the route says better.
MEANING = {
    400: "The body is not JSON: not UTF-8, not sent as JSON, nested too deep to parse, or holding NaN.",
    401: "No key, or a key that is not valid.",
    402: "The tenant's credits cannot cover the job; nothing was queued.",
    403: "This key may not do this: an admin-only endpoint with a tenant key, or a tenant's with the admin key.",
    404: "There is no such resource, or it is another tenant's.",
    409: "The request conflicts with what exists.",
    413: "The body is larger than the gateway takes.",
    422: "Valid JSON that breaks the schema, or a parameter that does; the message names the field.",
    429: "The tenant sends requests faster than its rate at this gateway, or its queue is full.",
    502: "An internal service failed in an unexpected way; what it said is logged.",
    503: "A dependency does not answer; retry after Retry-After.",
}

# Statuses of routes whose modules do not declare them yet (their owners may move them to
# the route's own `responses=`; both are merged).
DECLARED_ELSEWHERE: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/v1/tenants"): {409: "A tenant with this id exists (`tenant_exists`)."},
    ("GET", "/v1/tenants/me"): {403: "The admin key has no tenant of its own."},
    ("POST", "/v1/tenants/{tenant_id}/credits"): {
        409: "The balance would go below 0 or beyond 2**63 - 1 (`balance_conflict`); nothing changed."
    },
}


def documented(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's own error statuses, each with what it means there."""
    return {status: {"description": meaning, "model": Error} for status, meaning in statuses.items()}


def error_statuses(route: APIRoute | RouteContext) -> tuple[set[int], bool]:
    """The error statuses that follow from the route's dependencies, and whether it takes a key."""
    nodes = list(dependants(route.dependant))
    calls: set[Callable[..., Any]] = {node.call for node in nodes if node.call is not None}
    path_params = [p for node in nodes for p in node.path_params]
    other_params = [p for node in nodes for p in (*node.query_params, *node.header_params)]
    statuses: set[int] = set()
    keyed = current_principal in calls
    if keyed:
        statuses |= {401, 429, 502, 503}
    if admin_principal in calls or tenant_principal in calls:
        statuses.add(403)
    if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
        statuses |= {400, 413, 422}
    if path_params or other_params:
        statuses.add(422)  # a value out of its schema, or a NUL character (errors.storable_params)
    if path_params:
        statuses.add(404)
    return statuses, keyed


def _error_response(status: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    if status in (429, 503):
        response["headers"] = copy.deepcopy(RETRY_AFTER)
    return response


def _complete_operation(operation: dict[str, Any], route: RouteContext, method: str) -> None:
    statuses, keyed = error_statuses(route)
    own = {
        int(status): str(response.get("description", ""))
        for status, response in (route.responses or {}).items()
        if str(status).isdigit() and int(status) >= 400
    }
    own |= DECLARED_ELSEWHERE.get((method, route.path_format or ""), {})
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if parameter.get("in") in ("path", "query") and schema.get("type") == "string" and "pattern" not in schema:
            schema["pattern"] = NO_NUL  # errors.storable_params refuses a NUL in any of them
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's, with its {"detail": ...} body; ours follows if it applies
    for status in sorted(statuses | set(own)):
        responses[str(status)] = _error_response(status, own.get(status) or MEANING[status])
    if not keyed:
        operation["security"] = []


def _whole_bounds(node: Any) -> None:
    """Integer schemas get integer bounds (FastAPI's model made them floats)."""
    for schema in _schemas(node):
        if schema.get("type") != "integer":
            continue
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(key)
            if isinstance(value, float) and value.is_integer():
                # A float cannot hold 2**63 - 1: it came out as 2**63. The server stores int64.
                schema[key] = max(-INT64_MAX, min(INT64_MAX, int(value)))


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, dict):
            yield current
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)


def build(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error.pop("$defs", {}))
    schemas["Error"] = error
    schemas.update(copy.deepcopy(job_schema.COMPONENTS))
    components["securitySchemes"] = {
        SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "The operator's key (FAIRWAY_ADMIN_KEY) or a tenant's `api_key`.",
        }
    }
    document["security"] = [{SCHEME: []}]
    for route in http_routes(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _complete_operation(operation, route, method)
    _whole_bounds(document)
    return document


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
