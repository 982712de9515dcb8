"""How fair a split was, for the fairness tests and the scheduler benchmark.

    jain([got[t] / weight[t] for t in tenants])   # 1.0: every tenant got its weight's share
"""

from __future__ import annotations


def jain(values: list[float]) -> float:
    """Jain's fairness index of `values`: 1/n (one took all) to 1 (all equal)."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))
