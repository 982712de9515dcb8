"""Named queries from `queries.sql`, loaded once.

    from services.scheduler.sql import QUERIES
    await conn.fetch(QUERIES["claim_items"], lane, tenants, counts, worker, ttl)
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES: dict[str, str] = parse_queries(
    resources.files("services.scheduler").joinpath("queries.sql").read_text()
)

# Session settings of every scheduler connection. The item-moving statements take arrays
# whose length the planner only sees in a custom plan; the generic plan that prepared
# statements switch to after five runs guesses wrong (a scan of the whole lease index
# instead of primary-key probes) and costs 3-5x more than planning each call afresh.
SERVER_SETTINGS: dict[str, str] = {"plan_cache_mode": "force_custom_plan"}

