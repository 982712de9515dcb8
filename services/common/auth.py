"""Who may call which internal gRPC method: service tokens, checked by one server interceptor.

Callers (gateway, scheduler, predictor) open every channel to the scheduler or the ratelimiter
with `service_channel`, which sends `authorization: Bearer <FAIRWAY_SERVICE_TOKEN>` with each
call. Servers accept the callers listed in `FAIRWAY_ACCEPTED_TOKENS` (`identity:sha256hex`,
comma-separated: a hash, so a server never holds another service's token) and check every call
against `ALLOWED`, one table for every method of every service (docs/design/security.md):

    auth = ServiceAuth(AcceptedTokens.parse(config.accepted_tokens))
    server, port, health = create_server(registrars, ..., auth=auth)

A missing or unknown token is UNAUTHENTICATED; a known identity calling a method not granted
to it is PERMISSION_DENIED. The standard health service stays open (kubelet probes cannot send
credentials). The gateway also names the HTTP caller it authenticated (`Principal`) in
`x-fairway-principal`; only the scheduler reads it, and only the gateway may send it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.logging import get_logger

log = get_logger(__name__)

GATEWAY, SCHEDULER, PREDICTOR, ENVOY = "gateway", "scheduler", "predictor", "envoy"
IDENTITIES = frozenset({GATEWAY, SCHEDULER, PREDICTOR, ENVOY})

_SCHEDULER = "/fairway.scheduler.v1.Scheduler/"
_DISPATCH = "/fairway.scheduler.v1.Dispatch/"
_RATELIMITER = "/fairway.ratelimiter.v1.RateLimiter/"
_ENVOY_RLS = "/envoy.service.ratelimit.v3.RateLimitService/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _each(prefix: str, methods: Iterable[str], identities: Iterable[str]) -> dict[str, frozenset[str]]:
    allowed = frozenset(identities)
    return {prefix + method: allowed for method in methods}


# Every method any Fairway server serves, and the identities that may call it. A method not
# listed here is refused to everyone (tests/test_service_auth.py checks that none is missing).
ALLOWED: Mapping[str, frozenset[str]] = MappingProxyType({
    # The gateway's API, for the HTTP caller it authenticated (`x-fairway-principal`).
    **_each(_SCHEDULER, ("Authenticate", "CreateTenant", "GetTenant", "UpdateTenant", "AddCredits", "ListTenants",
                         "RotateKey", "SubmitJob", "GetJob", "ListJobs", "ListItems", "CancelJob", "WatchJob",
                         "GetQueueStats"), {GATEWAY}),
    # A provider's word on an item: only the gateway, which verified the webhook's signature.
    **_each(_SCHEDULER, ("ReportUpstreamResult",), {GATEWAY}),
    # Items, their prompts and their outcomes: only the predictors.
    **_each(_DISPATCH, ("Work", "Heartbeat", "RecordUpstream", "Complete", "Fail"), {PREDICTOR}),
    # Grants: the scheduler takes them for dispatch, the predictors for their own calls (reads,
    # retries) and settle, release or adjust them and report what the provider said.
    **_each(_RATELIMITER, ("Acquire", "Adjust", "Settle", "Release", "ReportUpstream"), {SCHEDULER, PREDICTOR}),
    # Budget use, no tenant data: the operator's stats page and the predictors' status line.
    **_each(_RATELIMITER, ("GetStats",), {GATEWAY, SCHEDULER, PREDICTOR}),
    **_each(_RATELIMITER, ("SetTenantCaps",), {SCHEDULER}),
    **_each(_ENVOY_RLS, ("ShouldRateLimit",), {ENVOY}),
    # Served only with FAIRWAY_GRPC_REFLECTION=true; then any accepted caller may use it.
    REFLECTION: IDENTITIES,
})
# Answered without credentials: the kubelet's gRPC probes cannot send any.
OPEN = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

AUTHORIZATION_KEY = "authorization"
PRINCIPAL_KEY = "x-fairway-principal"
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def token_hash(token: str) -> str:
    """What FAIRWAY_ACCEPTED_TOKENS lists for a caller: the SHA-256 of its token, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def callers(services: Iterable[str]) -> frozenset[str]:
    """The identities some method of these services (full names) is granted to."""
    prefixes = tuple(f"/{name}/" for name in services)
    return frozenset(i for method, allowed in ALLOWED.items() if method.startswith(prefixes) for i in allowed)


@dataclass(frozen=True)
class AcceptedTokens:
    """The callers a server accepts: (identity, SHA-256 of its token); an identity may have
    several hashes (an old and a new token, while it rotates)."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, text: str) -> AcceptedTokens:
        """Parse `identity:sha256hex,...`; ValueError names what is wrong."""
        entries: list[tuple[str, bytes]] = []
        owner: dict[bytes, str] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            identity, _, hexdigest = part.partition(":")
            identity, hexdigest = identity.strip(), hexdigest.strip()
            if identity not in IDENTITIES:
                raise ValueError(f"{part[:80]!r}: the identity must be one of {', '.join(sorted(IDENTITIES))}")
            if not _HEX_SHA256.match(hexdigest):
                raise ValueError(f"{identity}: expected the SHA-256 of its token as 64 hex digits "
                                 "(printf %s TOKEN | sha256sum)")
            digest = bytes.fromhex(hexdigest)
            if owner.setdefault(digest, identity) != identity:
                raise ValueError(f"one token hash is listed for both {owner[digest]} and {identity}")
            entries.append((identity, digest))
        if not entries:
            raise ValueError(
                "FAIRWAY_ACCEPTED_TOKENS is empty, so no caller is accepted: set it to identity:sha256hex,... "
                "(the SHA-256 of each caller's FAIRWAY_SERVICE_TOKEN; docs/design/security.md); "
                "`fairway up` sets it by itself"
            )
        return cls(tuple(entries))

    def identify(self, token: str) -> str | None:
        """The identity whose token this is, compared in constant time; None if none."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for identity, accepted in self.entries:  # no early exit: every entry costs the same
            if hmac.compare_digest(digest, accepted):
                found = identity
        return found


def check_accepted_tokens(text: str) -> str:
    """Validator of the FAIRWAY_ACCEPTED_TOKENS settings (services/*/config.py)."""
    AcceptedTokens.parse(text)
    return text


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the gateway acts for: the operator (admin) or one tenant."""

    admin: bool
    tenant: str = ""

    @property
    def scope(self) -> str:
        """The `tenant` field of scheduler requests: "" lets the admin see every tenant."""
        return "" if self.admin else self.tenant

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata that names it on a call to the scheduler."""
        return ((PRINCIPAL_KEY, "admin" if self.admin else f"tenant:{self.tenant}"),)

    @classmethod
    def of(cls, metadata: Sequence[tuple[str, Any]] | None) -> Principal | None:
        """The principal a call's metadata names, or None if it names none (or two)."""
        values = [value for key, value in metadata or () if key == PRINCIPAL_KEY]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        if values[0] == "admin":
            return cls(admin=True)
        kind, _, tenant = values[0].partition(":")
        return cls(admin=False, tenant=tenant) if kind == "tenant" and tenant else None


ADMIN = Principal(admin=True)

# ---- the server side ----

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
_REFUSAL_LOG_S = 60.0
_STREAM_REFUSAL_READ_S = 0.5


class ServiceAuth(grpc.aio.ServerInterceptor):
    """Refuses every call but health's unless its token is accepted and its identity is
    granted the method in `allowed`. Goes first among a server's interceptors."""

    def __init__(self, accepted: AcceptedTokens, allowed: Mapping[str, frozenset[str]] = ALLOWED) -> None:
        self._accepted = accepted
        self._allowed = allowed
        self._logged: dict[tuple[str, str], float] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method in OPEN:
            return handler
        identity = self._accepted.identify(_bearer(handler_call_details.invocation_metadata))
        if identity is None:
            self._log_refusal("unauthenticated", method)
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "this call needs an accepted service token: authorization: Bearer <FAIRWAY_SERVICE_TOKEN>")
        if handler is None:
            return None  # UNIMPLEMENTED, to an accepted caller only
        if identity not in self._allowed.get(method, ()):
            self._log_refusal(identity, method)
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not call {method}")
        return handler

    def _log_refusal(self, who: str, method: str) -> None:
        # Once a minute per caller and method: a scan or a misconfigured caller cannot flood the log.
        now = time.monotonic()
        if now - self._logged.get((who, method), -_REFUSAL_LOG_S) >= _REFUSAL_LOG_S:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged[(who, method)] = now
            log.warning("refused a call to %s: %s", method,
                        "no accepted service token" if who == "unauthenticated" else f"{who} may not call it")


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the refused method's kind that aborts at once, without parsing the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        # Ended while the client's messages are unread, a stream may reach the client as
        # INTERNAL instead of the refusal: read (unparsed) what it sends first, for a moment.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STREAM_REFUSAL_READ_S):
                async for _ in requests:
                    pass
        await context.abort(code, message)

    if handler is not None and handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.stream_unary_rpc_method_handler(refuse_stream)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# ---- the client side ----


class _CallMetadata:
    """Adds the same metadata (the caller's token) to every call of a channel."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = tuple(pairs)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._pairs)
        return details._replace(metadata=metadata)


# A channel files each interceptor under the first of the four kinds it is (an `elif` chain):
# one class per kind.
class _UnaryUnary(_CallMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_CallMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_CallMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_CallMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def service_channel(address: str, token: str, *, metadata: Sequence[tuple[str, str]] = ()) -> grpc.aio.Channel:
    """A channel to another Fairway service whose every call carries `token` (and `metadata`)."""
    pairs = ((AUTHORIZATION_KEY, f"Bearer {token}"), *metadata)
    interceptors = [kind(pairs) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
