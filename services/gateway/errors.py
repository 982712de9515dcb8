"""One place that turns every failure into the contract's error envelope.

    {"error": {"code": "invalid_json", "message": "..."}}

Routers raise `ApiError`; gRPC failures from the scheduler or the ratelimiter are
mapped here (status code + the `fairway-error` / `retry-after` trailing metadata),
so no router translates upstream errors itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import FairwayError
from services.common.logging import get_logger

log = get_logger(__name__)

ERROR_CODE_KEY = "fairway-error"
RETRY_AFTER_KEY = "retry-after"
# When a dependency is down and says nothing better: a short pause is enough for a restart.
DEFAULT_RETRY_AFTER_S = 2


class ApiError(FairwayError):
    """An answer other than success, with the HTTP status that fits."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return error_response(self.status, self.code, self.message, headers)


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body is read: FastAPI re-raises HTTP exceptions from body parsing as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes; send fewer items per job.")


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=dict(headers or {}))


def unavailable(what: str) -> ApiError:
    return ApiError(
        503,
        "unavailable",
        f"The {what} is not answering; retry shortly.",
        retry_after_s=DEFAULT_RETRY_AFTER_S,
    )


# ---------- gRPC → HTTP ----------

_BY_GRPC_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid_request"),
    grpc.StatusCode.OUT_OF_RANGE: (422, "invalid_request"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
}
_STATUS_BY_ERROR_CODE = {"insufficient_credits": 402, "queue_full": 429}
_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# Without our error code these are the service-token check's (services/common/auth.py).
_REFUSED_CALLER = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


# How the scheduler starts the message of a value its database refused (then quoted).
_UNSTORABLE = "a value in the request cannot be stored"


def _metadata(pairs: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs or ():
        out[key.lower()] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def from_rpc_error(exc: grpc.aio.AioRpcError, upstream: str = "scheduler") -> ApiError:
    """The HTTP answer for a failed call to `upstream`."""
    code = exc.code()
    meta = _metadata(exc.trailing_metadata())
    retry_after: float | None = None
    if RETRY_AFTER_KEY in meta:
        try:
            retry_after = float(meta[RETRY_AFTER_KEY])
        except ValueError:
            retry_after = None
    if code in _DOWN:
        err = unavailable(upstream)
        if retry_after is not None:
            err.retry_after_s = retry_after
        return err
    details = exc.details() or ""
    ours = ERROR_CODE_KEY in meta
    if code in _REFUSED_CALLER and not ours:
        # The upstream refused the gateway itself (its service token), not the client's request.
        log.error("%s refused the gateway: %s %s; check FAIRWAY_SERVICE_TOKEN and the %s's FAIRWAY_ACCEPTED_TOKENS",
                  upstream, code, details, upstream)
        return ApiError(502, "upstream_error", f"The {upstream} refused this gateway; the error is logged.")
    # INTERNAL, UNKNOWN (an exception the service did not map: its text may be a database's)
    # and the rest say nothing a client can act on. So does RESOURCE_EXHAUSTED without our
    # error code: that is gRPC's own, a message over its size limit, not a rate limit.
    if code not in _BY_GRPC_CODE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and not ours):
        log.error("%s failed: %s %s", upstream, code, details)
        return ApiError(502, "upstream_error", f"The {upstream} failed to answer this request; retry later.")
    if code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(_UNSTORABLE):
        # The scheduler names a value PostgreSQL refused and quotes PostgreSQL's words,
        # which are not for clients.
        log.warning("%s refused a value: %s", upstream, details)
        details = _UNSTORABLE + "; remove NUL characters and keep numbers within their documented ranges."
    status, default_code = _BY_GRPC_CODE[code]
    error_code = meta.get(ERROR_CODE_KEY) or default_code
    status = _STATUS_BY_ERROR_CODE.get(error_code, status)
    # A 429 the scheduler sends without retry-after is one that waiting cannot fix (a job
    # with more items than the queue limit): it goes out without Retry-After, so no client
    # waits and sends it again.
    return ApiError(status, error_code, details or error_code.replace("_", " "), retry_after_s=retry_after)


# ---------- request validation → 400 / 422 ----------


def storable_params(request: Request) -> None:
    """422 for a NUL character in a path parameter or a query parameter the route reads: the
    scheduler could not look it up. Query parameters the route ignores are not looked at."""
    route = request.scope.get("route")
    declared = _declared_query(route) if isinstance(route, APIRoute) else frozenset()
    query = [(name, value) for name, value in request.query_params.multi_items() if name in declared]
    for name, value in [*request.path_params.items(), *query]:
        if "\x00" in str(value):
            raise ApiError(422, "invalid_request", f"{name}: must not contain the NUL character (\\u0000)")


_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _declared_query(route: APIRoute) -> frozenset[str]:
    found = _QUERY_NAMES.get(id(route))
    if found is None:
        found = frozenset(p.alias for d in dependants(route.dependant) for p in d.query_params)
        _QUERY_NAMES[id(route)] = found
    return found


def dependants(root: Dependant) -> Iterator[Dependant]:
    """The route's dependant and every one it depends on, each once."""
    seen: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) not in seen:
            seen.add(id(node))
            yield node
            pending.extend(node.dependencies)


def field_path(loc: Sequence[int | str]) -> str:
    """("body", "items", 0, "input") → "items[0].input"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "syntax error")
            return ApiError(400, "invalid_json", f"The body is not valid JSON ({reason}); send a JSON object.")
        at_body = tuple(err.get("loc", ())) == ("body",)
        if at_body and err.get("type") == "missing":
            return ApiError(400, "invalid_json", "The body is empty; send a JSON object.")
        # A body that was not declared as JSON arrives as raw bytes.
        if at_body and isinstance(err.get("input"), bytes):
            return ApiError(
                400,
                "invalid_json",
                "The body must be a JSON object sent with Content-Type: application/json.",
            )
    if not errors:
        return ApiError(422, "invalid_request", "The request does not match the schema.")
    first = errors[0]
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, "invalid_request", f"{field_path(first.get('loc', ()))}: {msg}{extra}")


_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def install(app: FastAPI) -> None:
    """Register the handlers that render every error as the envelope."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_rpc_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return from_rpc_error(exc).response()

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 400:
            # FastAPI's only 400: a body its JSON parser gave up on (nested too deep, say).
            code, message = "invalid_json", "The body could not be parsed as JSON; send a JSON object."
        elif exc.status_code == 404:
            message = f"There is no {request.url.path}; see /openapi.json for the routes."
        return error_response(exc.status_code, code, message, exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "The gateway failed unexpectedly; the error is logged.")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_rpc_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
