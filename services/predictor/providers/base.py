"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fairway.scheduler.v1 import scheduler_pb2 as pb


@dataclass
class Result:
    output: Any
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallContext:
    """What an adapter may do besides calling its provider."""

    # Persist the provider's id of an accepted call before waiting on it.
    record_upstream: Callable[[str], Awaitable[bool]]
    # Settle the dispatch grant with the tokens the call really used.
    settle: Callable[[int], Awaitable[None]]
    # The grant was not used: the call never reached the provider.
    release: Callable[[], Awaitable[None]]


class Provider(Protocol):
    name: str

    async def run(self, assignment: pb.Assignment, ctx: CallContext) -> Result:
        """Make (or resume) the item's upstream call; raise an `UpstreamError` on failure."""
        ...

    async def close(self) -> None: ...
