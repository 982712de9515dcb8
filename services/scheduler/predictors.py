"""The predictors with a work stream open to this replica, and the assignments waiting to be
written to each stream.

    registry.add(stream); registry.assign(assignment); unsent = registry.remove(stream)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from fairway.scheduler.v1 import scheduler_pb2 as pb

_ids = itertools.count(1)


# Item ids per cancel message on a stream (a message stays far below gRPC's 4 MB).
CANCELS_PER_MESSAGE = 1000


@dataclass(eq=False)
class PredictorStream:
    """One predictor's `Work` stream: what it calls, its free slots, what waits to be written."""

    name: str
    providers: frozenset[str]
    accepts_cancels: bool = False
    slots: int = 0
    outbox: asyncio.Queue[pb.Assignment] = field(default_factory=asyncio.Queue)
    key: int = field(default_factory=lambda: next(_ids))
    connected_at: float = field(default_factory=time.time)

    def accepts(self, provider: str) -> bool:
        return not self.providers or provider in self.providers


class PredictorRegistry:
    def __init__(self) -> None:
        self._streams: dict[int, PredictorStream] = {}
        self._turn = 0

    def add(self, stream: PredictorStream) -> None:
        self._streams[stream.key] = stream

    def remove(self, stream: PredictorStream) -> list[pb.Assignment]:
        """Forget a stream; return the assignments it never received."""
        self._streams.pop(stream.key, None)
        unsent = []
        while not stream.outbox.empty():
            message = stream.outbox.get_nowait()
            if message.item_id:  # not a cancel notice
                unsent.append(message)
        return unsent

    def connected(self) -> list[PredictorStream]:
        return list(self._streams.values())

    def tell_canceled(self, item_ids: list[str]) -> int:
        """Tell every stream that accepts cancels that these items' jobs were canceled; the
        holders act on theirs, the others ignore them (no map of holders is kept: a cancel is
        rare, and an in-flight item is on one of this replica's streams or another's).
        Queued behind the assignments already in each outbox, so an item is never told
        before it is handed out. The number of streams told."""
        told = 0
        for stream in self._streams.values():
            if not stream.accepts_cancels:
                continue
            for start in range(0, len(item_ids), CANCELS_PER_MESSAGE):
                stream.outbox.put_nowait(pb.Assignment(canceled_item_ids=item_ids[start:start + CANCELS_PER_MESSAGE]))
            told += 1
        return told

    def free_slots(self, provider: str | None = None) -> int:
        return sum(w.slots for w in self._streams.values() if provider is None or w.accepts(provider))

    def providers_with_slots(self) -> set[str] | None:
        """Providers some stream with free slots accepts; None means any provider."""
        found: set[str] = set()
        for w in self._streams.values():
            if w.slots > 0:
                if not w.providers:
                    return None
                found |= w.providers
        return found

    def assign(self, assignment: pb.Assignment) -> bool:
        """Hand one assignment to a stream with a free slot, rotating among them."""
        streams = [w for w in self._streams.values() if w.slots > 0 and w.accepts(assignment.provider)]
        if not streams:
            return False
        self._turn = (self._turn + 1) % len(streams)
        stream = streams[self._turn]
        stream.slots -= 1
        stream.outbox.put_nowait(assignment)
        return True
