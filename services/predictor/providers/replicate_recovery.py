"""Closing the window between a Replicate create and the record of its id.

Before a create, the item records an *intent* (`creating:<item>:<unix time>`) as its
upstream id. If the worker dies after the provider accepted the create but before the
prediction id was recorded, the next holder finds the intent instead of an id: it lists the
account's predictions newest first, back to the intent's time, and adopts the one with the
item's model and input that no other item holds (the scheduler keeps upstream ids unique).
Only when none is found is a new prediction created, so a crash anywhere around the create
costs one listing, never a second prediction. The listing is a paid read like any other
(`list_page`): a 429, 5xx, timeout or reset on it is waited out, never the item's failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fairway.scheduler.v1 import scheduler_pb2 as pb
from replicate.pagination import Page
from replicate.prediction import Prediction

INTENT = "creating:"
# Clock skew allowed between this host and the provider's timestamps.
SKEW_S = 30.0
MAX_PAGES = 50


def intent_id(item_id: str) -> str:
    return f"{INTENT}{item_id}:{time.time():.3f}"


def is_intent(upstream_id: str) -> bool:
    return upstream_id.startswith(INTENT)


def intent_time(upstream_id: str) -> float:
    try:
        return float(upstream_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0.0


async def find_orphan(
    list_page: Callable[[Any], Awaitable[Page[Prediction]]], assignment: pb.Assignment,
    adopt: Callable[[str], Awaitable[bool]],
) -> dict[str, Any] | None:
    """The prediction a previous holder created for this item, adopted; None if there is none.
    `list_page(cursor)` pays for, and waits out the transient failures of, one page."""
    since = intent_time(assignment.upstream_id) - SKEW_S
    want_input = json.loads(assignment.input_json)
    model, _, version = assignment.model.partition(":")
    cursor: Any = ...
    for _ in range(MAX_PAGES):
        page = await list_page(cursor)
        for prediction in page.results:
            dump = getattr(prediction, "model_dump", None) or prediction.dict
            data = dict(dump())
            if _created(data) < since:
                return None  # newest first: everything further is older than the intent
            same_model = data.get("version") == version if version else data.get("model") == model
            if same_model and data.get("input") == want_input and await adopt(str(data["id"])):
                return data
        if not page.next:
            return None
        cursor = page.next
    return None


def _created(data: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(data.get("created_at"))).timestamp()
    except ValueError:
        return 0.0
