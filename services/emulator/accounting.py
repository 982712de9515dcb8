"""What the emulator saw: per API key and endpoint, requests by outcome and by second.

    accounting.record("key-1", "replicate.create", ACCEPTED)
    accounting.snapshot()      # the body of GET /_emulator/stats (docs/emulator.md)

Outcomes: `accepted` (admitted by the limiter, whatever happened next), `rejected` (429),
`faults` (accepted, then an injected 5xx or reset), `invalid` (401, 404, 400, 422).
"""

from __future__ import annotations

import time

ACCEPTED = 0
REJECTED = 1
FAULTS = 2
INVALID = 3
_NAMES = ("accepted", "rejected", "faults", "invalid")


class _Counter:
    __slots__ = ("per_second", "tokens", "totals")

    def __init__(self) -> None:
        self.totals = [0, 0, 0, 0]
        self.tokens = 0
        self.per_second: dict[int, list[int]] = {}  # unix second -> [accepted, rejected]


class Accounting:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], _Counter] = {}
        self.webhooks = {"delivered": 0, "failed_attempts": 0, "abandoned": 0}
        self.started_at = time.time()

    def record(self, key: str, endpoint: str, outcome: int, tokens: int = 0) -> None:
        counter = self._counters.get((key, endpoint))
        if counter is None:
            counter = self._counters[(key, endpoint)] = _Counter()
        counter.totals[outcome] += 1
        counter.tokens += tokens
        if outcome <= REJECTED:
            second = int(time.time())
            row = counter.per_second.get(second)
            if row is None:
                row = counter.per_second[second] = [0, 0]
            row[outcome] += 1

    def snapshot(self, key: str | None = None) -> dict[str, object]:
        keys: dict[str, dict[str, object]] = {}
        totals = dict.fromkeys(_NAMES, 0)
        for (k, endpoint), counter in sorted(self._counters.items()):
            if key is not None and k != key:
                continue
            entry: dict[str, object] = dict(zip(_NAMES, counter.totals, strict=True))
            entry["tokens"] = counter.tokens
            entry["per_second"] = [[s, a, r] for s, (a, r) in sorted(counter.per_second.items())]
            keys.setdefault(k, {})[endpoint] = entry
            for name, value in zip(_NAMES, counter.totals, strict=True):
                totals[name] += value
        return {
            "started_at": self.started_at,
            "totals": totals,
            "keys": keys,
            "webhooks": dict(self.webhooks),
        }

    def clear(self) -> None:
        self._counters.clear()
        for name in self.webhooks:
            self.webhooks[name] = 0
        self.started_at = time.time()
