"""What the emulator saw: per API key and endpoint, requests by outcome and by second.

    accounting.record("key-1", "replicate.create", ACCEPTED)
    accounting.record_foreign("key-1", "replicate.create", first=..., interval=0.0, count=1)
    accounting.snapshot()      # the body of GET /_emulator/stats (docs/emulator.md)
    accounting.dump()          # the same counts for the state file; `load` reads them back

Outcomes: `accepted` (admitted by the limiter, whatever happened next), `rejected` (429),
`faults` (accepted, then an injected 5xx or reset), `invalid` (401, 404, 400, 422).
Foreign requests (another service on the key) are counted under the budget they used.
"""

from __future__ import annotations

import math
import time
from typing import Any

ACCEPTED = 0
REJECTED = 1
FAULTS = 2
INVALID = 3
_NAMES = ("accepted", "rejected", "faults", "invalid")


class _Foreign:
    __slots__ = ("accepted", "per_second", "prefilled", "share")

    def __init__(self) -> None:
        self.share = 0.0
        self.accepted = 0
        self.prefilled = 0
        self.per_second: dict[int, int] = {}  # unix second -> foreign requests admitted

    def to_dict(self) -> dict[str, Any]:
        rows = [[s, n] for s, n in sorted(self.per_second.items())]
        return {"share": self.share, "accepted": self.accepted, "prefilled": self.prefilled, "per_second": rows}

    def load(self, data: dict[str, Any]) -> None:
        self.share = float(data["share"])
        self.accepted = int(data["accepted"])
        self.prefilled = int(data["prefilled"])
        self.per_second = {int(s): int(n) for s, n in data["per_second"]}


class _Counter:
    __slots__ = ("foreign", "per_second", "tokens", "totals")

    def __init__(self) -> None:
        self.totals = [0, 0, 0, 0]
        self.tokens = 0
        self.per_second: dict[int, list[int]] = {}  # unix second -> [accepted, rejected]
        self.foreign: _Foreign | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = dict(zip(_NAMES, self.totals, strict=True))
        entry["tokens"] = self.tokens
        entry["per_second"] = [[s, a, r] for s, (a, r) in sorted(self.per_second.items())]
        if self.foreign is not None:
            entry["foreign"] = self.foreign.to_dict()
        return entry

    def load(self, entry: dict[str, Any]) -> None:
        self.totals = [int(entry[name]) for name in _NAMES]
        self.tokens = int(entry["tokens"])
        self.per_second = {int(s): [int(a), int(r)] for s, a, r in entry["per_second"]}
        if "foreign" in entry:
            self.foreign = _Foreign()
            self.foreign.load(entry["foreign"])


class Accounting:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], _Counter] = {}
        self.webhooks = {"delivered": 0, "failed_attempts": 0, "abandoned": 0}
        self.started_at = time.time()
        self.revision = 0  # moves on every change: the state file is written when it has moved

    def _counter(self, key: str, endpoint: str) -> _Counter:
        counter = self._counters.get((key, endpoint))
        if counter is None:
            counter = self._counters[(key, endpoint)] = _Counter()
        return counter

    def record(self, key: str, endpoint: str, outcome: int, tokens: int = 0) -> None:
        self.revision += 1
        counter = self._counter(key, endpoint)
        counter.totals[outcome] += 1
        counter.tokens += tokens
        if outcome <= REJECTED:
            second = int(time.time())
            row = counter.per_second.get(second)
            if row is None:
                row = counter.per_second[second] = [0, 0]
            row[outcome] += 1

    def webhook(self, outcome: str) -> None:
        """Count a webhook attempt: `delivered`, `failed_attempts` or `abandoned`."""
        self.revision += 1
        self.webhooks[outcome] += 1

    def _foreign(self, key: str, budget: str) -> _Foreign:
        counter = self._counter(key, budget)
        if counter.foreign is None:
            counter.foreign = _Foreign()
        return counter.foreign

    def foreign_share(self, key: str, budget: str, share: float, prefilled: int) -> None:
        """The other service's share of `budget` changed; `prefilled` of its requests were put in its window."""
        self.revision += 1
        foreign = self._foreign(key, budget)
        foreign.share = share
        foreign.prefilled += prefilled

    def record_foreign(self, key: str, budget: str, first: float, interval: float, count: int) -> None:
        """`count` foreign requests admitted at unix times `first`, `first + interval`, …"""
        self.revision += 1
        foreign = self._foreign(key, budget)
        foreign.accepted += count
        rows = foreign.per_second
        if count == 1 or interval <= 0:
            second = int(first)
            rows[second] = rows.get(second, 0) + count
            return
        done = 0
        while done < count:  # one step a second, however many requests it holds
            second = math.floor(first + done * interval)
            end = min(count, max(done + 1, math.ceil((second + 1 - first) / interval)))
            rows[second] = rows.get(second, 0) + end - done
            done = end

    def snapshot(self, key: str | None = None) -> dict[str, object]:
        keys: dict[str, dict[str, object]] = {}
        totals = dict.fromkeys(_NAMES, 0)
        for (k, endpoint), counter in sorted(self._counters.items()):
            if key is not None and k != key:
                continue
            keys.setdefault(k, {})[endpoint] = counter.to_dict()
            for name, value in zip(_NAMES, counter.totals, strict=True):
                totals[name] += value
        return {
            "started_at": self.started_at,
            "totals": totals,
            "keys": keys,
            "webhooks": dict(self.webhooks),
        }

    def dump(self) -> dict[str, Any]:
        counters = [
            {"key": key, "endpoint": endpoint, **counter.to_dict()}
            for (key, endpoint), counter in self._counters.items()
        ]
        return {"started_at": self.started_at, "webhooks": dict(self.webhooks), "counters": counters}

    def load(self, data: dict[str, Any]) -> None:
        """Counts from a `dump` (a previous run's state file), replacing these."""
        self.clear()
        self.started_at = float(data["started_at"])
        self.webhooks.update({name: int(data["webhooks"][name]) for name in self.webhooks})
        for entry in data["counters"]:
            self._counter(str(entry["key"]), str(entry["endpoint"])).load(entry)

    def clear(self) -> None:
        self.revision += 1
        self._counters.clear()
        for name in self.webhooks:
            self.webhooks[name] = 0
        self.started_at = time.time()
