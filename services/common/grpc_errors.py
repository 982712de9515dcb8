"""Map a service's own errors to gRPC statuses at one edge: a server interceptor.

An error class declares `status` (a `grpc.StatusCode`) and `code` (the public error code);
the client side reads the code from trailing metadata `fairway-error`, and the wait from
`retry-after` when the error carries `retry_after_s`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import FairwayError
from services.common.logging import get_logger

log = get_logger(__name__)


async def _abort(context: grpc.aio.ServicerContext, exc: FairwayError) -> None:
    status = getattr(exc, "status", grpc.StatusCode.INTERNAL)
    metadata: list[tuple[str, str]] = [("fairway-error", getattr(exc, "code", "internal"))]
    retry_after = getattr(exc, "retry_after_s", 0.0)
    if retry_after:
        metadata.append(("retry-after", f"{retry_after:g}"))
    await context.abort(status, str(exc), trailing_metadata=tuple(metadata))


Translate = Callable[[Exception], FairwayError | None]


class ErrorMapping(grpc.aio.ServerInterceptor):
    """Turns a raised `FairwayError` into `context.abort(status, message)` with metadata.

    `translate` maps a dependency's exceptions (a lost database connection) to the
    service's own errors; anything else propagates as gRPC's UNKNOWN and is logged.
    """

    def __init__(self, translate: Translate | None = None) -> None:
        self._translate = translate or (lambda exc: None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind, make, wrap in _KINDS:
            behavior = getattr(handler, kind)
            if behavior:
                return make(
                    wrap(behavior, self._translate),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


async def _fail(context: grpc.aio.ServicerContext, exc: Exception, translate: Translate) -> None:
    """Abort the call with the mapped error, or re-raise what has no mapping."""
    mapped = exc if isinstance(exc, FairwayError) else translate(exc)
    if mapped is None:
        raise exc
    await _abort(context, mapped)


def _wrap_unary(behavior: Callable[..., Any], translate: Translate) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except Exception as exc:
            await _fail(context, exc, translate)

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], translate: Translate) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # A streaming handler written with `context.write()` (as the health service's Watch
        # is) is a coroutine, not a generator: wrap it like a unary one.
        return _wrap_unary(behavior, translate)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except Exception as exc:
            await _fail(context, exc, translate)

    return wrapper


_KINDS: list[tuple[str, Callable[..., grpc.RpcMethodHandler], Callable[..., Any]]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler, _wrap_unary),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, _wrap_stream),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, _wrap_unary),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, _wrap_stream),
]
