"""The predictors connected to every replica, for the queue statistics (the status page).

A predictor opens its work stream to one replica, which alone knows it. Each replica
publishes its streams every few seconds (`predictor_streams`), as it publishes its dispatch
rates, so that the statistics of any replica list every replica's predictors.

    presence = PredictorPresence(pool, "replica-a", predictors); presence.start(supervisor)
    await presence.everywhere()      # this replica's streams now + the others' as published
"""

from __future__ import annotations

import asyncio

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.supervision import Supervisor
from services.scheduler.predictors import PredictorRegistry
from services.scheduler.rates import PUBLISH_SECONDS
from services.scheduler.sql import QUERIES


class PredictorPresence:
    def __init__(
        self, pool: asyncpg.Pool, replica: str, predictors: PredictorRegistry, *, publish_s: float | None = None
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._predictors = predictors
        self._publish_s = PUBLISH_SECONDS if publish_s is None else publish_s
        self._published = False  # the last publication had rows: an empty one must clear them

    def start(self, supervisor: Supervisor) -> None:
        supervisor.loop("predictor-presence", self.publish, wait=self._due)

    async def _due(self) -> None:
        await asyncio.sleep(self._publish_s)

    def here(self) -> list[pb.Predictor]:
        """This replica's streams; a worker id with two streams (a reconnect) is one predictor."""
        found: dict[str, pb.Predictor] = {}
        for w in self._predictors.connected():
            seen = found.get(w.name)
            if seen is None:
                found[w.name] = pb.Predictor(
                    name=w.name, providers=sorted(w.providers), free_slots=w.slots, connected_at=w.connected_at
                )
            else:
                seen.free_slots += w.slots
                seen.connected_at = min(seen.connected_at, w.connected_at)
        return list(found.values())

    async def publish(self) -> None:
        here = self.here()
        if not here and not self._published:
            return
        await self._pool.execute(
            QUERIES["publish_predictors"], self._replica, [p.name for p in here],
            [",".join(p.providers) for p in here], [p.free_slots for p in here], [p.connected_at for p in here],
        )
        self._published = bool(here)

    async def everywhere(self) -> list[pb.Predictor]:
        """Every replica's predictors, by name; a name on two replicas shows once per replica."""
        found = self.here()
        for row in await self._pool.fetch(QUERIES["predictors_elsewhere"], self._replica, 2 * self._publish_s):
            found.append(pb.Predictor(
                name=row["worker"], providers=[p for p in row["providers"].split(",") if p],
                free_slots=row["free_slots"], connected_at=row["connected_at"],
            ))
        found.sort(key=lambda p: (p.name, p.connected_at))
        return found
