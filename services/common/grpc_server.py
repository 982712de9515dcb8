"""The frame of every gRPC service: authentication, health, reflection, graceful SIGTERM.

    server, port, health = create_server(
        [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer)],
        service_names=["fairway.scheduler.v1.Scheduler"],
        address="127.0.0.1:50051",
        auth=ServiceAuth(AcceptedTokens.parse(config.accepted_tokens)),
    )
    await serve(server, health, grace_s=10.0)
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.logging import get_logger

if TYPE_CHECKING:
    from services.common.auth import ServiceAuth

log = get_logger(__name__)

Registrar = tuple[Callable[[Any, grpc.aio.Server], None], Any]

# Plenty for large batches of items in one message, bounded so a bad client cannot exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Per call across every address the target resolves to (a list `ipv4:a:1,b:2`, or a
    # headless Service's `dns:///…`), not every call to the first replica's connection.
    ("grpc.lb_policy_name", "round_robin"),
]
# A server refuses pings more frequent than this (default 5 min) and, after two, ends the
# connection with GOAWAY too_many_pings: allow the clients' keepalive above. The channel
# argument is named "min_ping_interval_without_data_ms" (GRPC_ARG_HTTP2_MIN_RECV_PING_
# INTERVAL_WITHOUT_DATA_MS is only its C macro); an unknown name is ignored without a word,
# which left the 5-minute default, and idle clients logged a GOAWAY every minute or so.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class HealthState:
    """The standard health service, plus the names it reports on.

    SERVING when the process says so (`set`: it started, its dependency answers) and no part
    of it is failing (`set_part`: a background loop that keeps failing, see
    services/common/supervision.py); NOT_SERVING for good once it drains.
    """

    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
        self.servicer = servicer
        self.names = ["", *names]
        self._serving = True  # the servicer's own default for "", until `serve` says
        self._failing: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self._serving and not self._failing

    @property
    def failing(self) -> frozenset[str]:
        return frozenset(self._failing)

    async def set(self, serving: bool) -> None:
        self._serving = serving
        await self._publish()

    async def set_part(self, part: str, ok: bool) -> None:
        """A part of the process works (`ok`) or not; any part that does not makes it NOT_SERVING."""
        if ok == (part not in self._failing):
            return
        if ok:
            self._failing.discard(part)
        else:
            self._failing.add(part)
        log.warning("%s %s: %s", part, "works again" if ok else "is failing",
                    "SERVING" if self.serving else f"NOT_SERVING ({', '.join(sorted(self._failing)) or 'stopped'})")
        await self._publish()

    async def drain(self) -> None:
        """NOT_SERVING from now on, whatever a part or a probe says afterwards."""
        await self.servicer.enter_graceful_shutdown()

    async def _publish(self) -> None:
        # One publication at a time: two interleaved could leave names with different statuses.
        async with self._lock:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in self.names:
                await self.servicer.set(name, status)


def create_server(
    registrars: Iterable[Registrar],
    *,
    service_names: Sequence[str],
    address: str,
    auth: ServiceAuth | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reflection_on: bool = False,
) -> tuple[grpc.aio.Server, int, HealthState]:
    """Build a server with the given servicers and health (and reflection if `reflection_on`);
    bind `address`. Every call but health's goes through `auth` first (services/common/auth.py);
    only a server that serves nothing but health may have none.

    Returns the server (not started), the bound port (useful with port 0) and its health state.
    """
    registrars = list(registrars)
    if auth is None and (registrars or reflection_on):
        raise ValueError("a server with services of its own (or reflection) needs a ServiceAuth")
    server = grpc.aio.server(interceptors=[*([auth] if auth else []), *interceptors], options=SERVER_OPTIONS)
    for add, servicer in registrars:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_on:
        reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            server,
        )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC address {address}")
    return server, port, HealthState(health_servicer, service_names)


async def serve(
    server: grpc.aio.Server,
    health_state: HealthState,
    *,
    grace_s: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Start the server and run until SIGTERM/SIGINT, then stop gracefully.

    On a signal, health flips to NOT_SERVING first (so load balancers stop sending),
    then in-flight RPCs get `grace_s` seconds, then `on_stop` releases resources.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await health_state.set(serving=True if ready is None else await ready())
    log.info("serving gRPC")
    await stop.wait()
    log.info("stopping: draining for up to %.1fs", grace_s)
    await health_state.drain()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
