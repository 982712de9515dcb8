"""A canceled job's items in flight, told to the predictors that hold them, on every replica.

The replica that takes a cancel is often not the one whose streams hold the job's items. It
announces the items on `NOTIFY fairway_cancels` in the cancel's own transaction (so the
notice goes out exactly when the cancel commits) and tells its own streams at once; every
other replica hears the notice and tells its streams. No map of holders is kept: the ids go
to every stream that accepts cancels (`WorkerHello.accepts_cancels`), and each predictor acts
on the ones it holds. A notice lost while the listening connection was down is made good by
the heartbeat, which names the held items whose job was canceled (`HeartbeatResponse.cancel`).

    cancels = CancelNotices(dispatcher.predictors, replica)
    notices.subscribe(CHANNEL, cancels.heard)
    await cancels.announce(conn, item_ids)     # inside the cancel's transaction
    cancels.tell(item_ids)                     # once it committed
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.common.logging import get_logger
from services.scheduler.predictors import PredictorRegistry
from services.scheduler.sql import QUERIES

log = get_logger(__name__)

CHANNEL = "fairway_cancels"
# A notification's payload is limited to 8000 bytes: "<replica>|" and then ids of 36
# characters and a comma each, 200 of them (7,400 bytes) per notification.
IDS_PER_NOTICE = 200


class CancelNotices:
    def __init__(self, predictors: PredictorRegistry, replica: str) -> None:
        self._predictors = predictors
        self._replica = replica

    async def announce(self, conn: asyncpg.Connection, item_ids: Sequence[str]) -> None:
        """Queue the notices in `conn`'s transaction: PostgreSQL sends them at its commit."""
        for start in range(0, len(item_ids), IDS_PER_NOTICE):
            chunk = ",".join(item_ids[start:start + IDS_PER_NOTICE])
            await conn.execute(QUERIES["notify_cancels"], f"{self._replica}|{chunk}")

    def heard(self, payload: str) -> None:
        """`fairway_cancels`: another replica canceled a job (this one told its streams itself)."""
        replica, _, ids = payload.partition("|")
        if replica != self._replica and ids:
            self.tell(ids.split(","))

    def tell(self, item_ids: Sequence[str]) -> None:
        """Tell this replica's streams; a predictor cancels upstream the items it holds."""
        if not item_ids:
            return
        streams = self._predictors.tell_canceled(list(item_ids))
        log.info("told %d streams that %d items in flight were canceled", streams, len(item_ids))
