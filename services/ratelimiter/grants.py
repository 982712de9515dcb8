"""Grant ids: opaque to callers, self-describing to the ratelimiter.

    budget|tenant|tokens|issued_us|serial

Settle and release need no lookup: the id says which budget (and tenant) it drew from,
how many tokens it reserved and when. `serial` makes it unique, for the double-close guard
and the concurrency lease.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.ratelimiter.errors import InvalidBudgetRequest

SEP = "|"


@dataclass(frozen=True)
class GrantId:
    budget: str
    tenant: str
    tokens: int
    issued_us: int
    serial: str

    def encode(self) -> str:
        return SEP.join((self.budget, self.tenant, str(self.tokens), str(self.issued_us), self.serial))

    @classmethod
    def decode(cls, raw: str) -> GrantId:
        parts = raw.split(SEP)
        if len(parts) != 5:
            raise InvalidBudgetRequest(f"malformed grant id {raw!r}")
        budget, tenant, tokens, issued, serial = parts
        try:
            return cls(budget, tenant, int(tokens), int(issued), serial)
        except ValueError:
            raise InvalidBudgetRequest(f"malformed grant id {raw!r}") from None


class SerialSource:
    """Batch prefixes unique across replicas: a random replica tag and a local counter.

    The store appends `.k` for the k-th grant of a batch.
    """

    def __init__(self) -> None:
        self._tag = os.urandom(5).hex()
        self._next = 0

    def batch_prefix(self) -> str:
        self._next += 1
        return f"{self._tag}{self._next:x}"
