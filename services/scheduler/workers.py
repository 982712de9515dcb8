"""Connected predictors and the assignments waiting to be written to their streams."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from fairway.scheduler.v1 import scheduler_pb2 as pb

_ids = itertools.count(1)


@dataclass(eq=False)
class Worker:
    name: str
    providers: frozenset[str]
    slots: int = 0
    outbox: asyncio.Queue[pb.Assignment] = field(default_factory=asyncio.Queue)
    key: int = field(default_factory=lambda: next(_ids))
    connected_at: float = field(default_factory=time.time)

    def accepts(self, provider: str) -> bool:
        return not self.providers or provider in self.providers


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: dict[int, Worker] = {}
        self._turn = 0

    def add(self, worker: Worker) -> None:
        self._workers[worker.key] = worker

    def remove(self, worker: Worker) -> list[pb.Assignment]:
        """Forget a worker; return the assignments it never received."""
        self._workers.pop(worker.key, None)
        unsent = []
        while not worker.outbox.empty():
            unsent.append(worker.outbox.get_nowait())
        return unsent

    def connected(self) -> list[Worker]:
        return list(self._workers.values())

    def free_slots(self, provider: str | None = None) -> int:
        return sum(w.slots for w in self._workers.values() if provider is None or w.accepts(provider))

    def providers_with_slots(self) -> set[str] | None:
        """Providers some free worker accepts; None means any provider."""
        found: set[str] = set()
        for w in self._workers.values():
            if w.slots > 0:
                if not w.providers:
                    return None
                found |= w.providers
        return found

    def assign(self, assignment: pb.Assignment) -> bool:
        """Hand one assignment to a free worker, rotating among them."""
        workers = [w for w in self._workers.values() if w.slots > 0 and w.accepts(assignment.provider)]
        if not workers:
            return False
        self._turn = (self._turn + 1) % len(workers)
        worker = workers[self._turn]
        worker.slots -= 1
        worker.outbox.put_nowait(assignment)
        return True
