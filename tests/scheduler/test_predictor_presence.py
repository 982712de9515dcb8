"""Every replica's queue statistics list the predictors connected to every replica."""

from __future__ import annotations

import asyncio

import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler import presence
from tests.scheduler.conftest import Client, FakePredictor, StartPair

Listed = list[tuple[str, list[str], int]]


async def listed(client: Client) -> Listed:
    stats = await client.api.GetQueueStats(pb.GetQueueStatsRequest())
    return [(p.name, list(p.providers), p.free_slots) for p in stats.predictors]


async def until_listed(client: Client, expected: Listed, timeout_s: float = 10.0) -> None:
    found: Listed = []
    async with asyncio.timeout(timeout_s):
        while (found := await listed(client)) != expected:  # noqa: ASYNC110 (another process publishes)
            await asyncio.sleep(0.05)
    assert found == expected


async def test_a_predictor_is_listed_by_every_replica_while_connected(
    replica_pair: StartPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence, "PUBLISH_SECONDS", 0.2)
    a, b = await replica_pair()
    gpu = FakePredictor(a, name="gpu-1", providers=("openai",))
    gpu.ready(3)
    other = FakePredictor(b, name="cpu-1")
    try:
        await until_listed(a, [("cpu-1", [], 0), ("gpu-1", ["openai"], 3)])
        await until_listed(b, [("cpu-1", [], 0), ("gpu-1", ["openai"], 3)])
        stats = await a.api.GetQueueStats(pb.GetQueueStatsRequest())
        assert all(p.connected_at > 0 for p in stats.predictors)
    finally:
        await gpu.close()
    # A stream that closed drops out of its own replica at once and of the other's at its next publication.
    await until_listed(a, [("cpu-1", [], 0)])
    await until_listed(b, [("cpu-1", [], 0)])
    await other.close()
    await until_listed(a, [])
