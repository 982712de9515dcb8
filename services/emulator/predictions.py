"""A Replicate prediction: the object the API shows, and its record in the state file.

    prediction = Prediction(new_prediction_id(), key, model, version, input, base_url)
    prediction.body()                       # the API object, serialized once per state
    prediction.record()                     # its state-file record, likewise
    Prediction.from_record(json.loads(...))

Its timeline is kept in wall-clock time (`start_due`, `complete_due`, unix seconds), so a
prediction restored after a restart carries on where it would have been by then.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from datetime import UTC, datetime
from typing import Any

from services.emulator.calls import dumps

EVENTS = ("start", "output", "logs", "completed")
TERMINAL = frozenset(("succeeded", "failed", "canceled"))


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def new_prediction_id() -> str:
    """26 characters of lowercase base32, as Replicate's ids are; random, so never one of a previous run."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def output_for(digest_of_input: bytes, payload: dict[str, Any]) -> object:
    """A URL per output, derived from the model and the input alone."""
    stem = digest_of_input[:16].hex()
    fmt = payload.get("output_format")
    ext = fmt if fmt in ("png", "jpg", "jpeg", "webp") else "png"
    count = payload.get("num_outputs")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return [f"https://replicate.delivery/emulated/{stem}-{i}.{ext}" for i in range(min(count, 16))]
    return f"https://replicate.delivery/emulated/{stem}.{ext}"


class Prediction:
    __slots__ = (
        "_cache",
        "_record",
        "base_url",
        "complete_due",
        "completed_at",
        "created_at",
        "digest",
        "digest_of_input",
        "error",
        "events",
        "hook_pending",
        "id",
        "input",
        "key",
        "logs",
        "metrics",
        "model",
        "output",
        "start_due",
        "started_at",
        "status",
        "timer",
        "version",
        "waiters",
        "webhook",
        "webhook_chain",
    )

    def __init__(
        self, pid: str, key: str, model: str, version: str, input: dict[str, Any], base_url: str, created: float
    ) -> None:
        self.id, self.key, self.model, self.version, self.input = pid, key, model, version, input
        self.base_url = base_url
        self.status = "starting"
        self.output: Any = None
        self.error: str | None = None
        self.logs = ""
        self.metrics: dict[str, float] = {}
        self.created_at = iso(created)
        self.started_at: str | None = None
        self.completed_at: str | None = None
        self.start_due = created  # unix seconds of the next step, while it is starting / processing
        self.complete_due = created
        self.digest = b""  # of seed, model, input and occurrence: drives latency and failure
        self.digest_of_input = b""  # of model and input alone: names the output
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.webhook: str | None = None
        self.events: frozenset[str] = frozenset()
        self.webhook_chain: asyncio.Task[None] | None = None
        self.hook_pending = False  # its `completed` webhook is owed: sent again after a restart
        self._cache: bytes | None = None
        self._record: str | None = None

    def changed(self) -> None:
        self._cache = None
        self._record = None

    def body(self) -> bytes:
        """The prediction object, serialized once per state."""
        if self._cache is None:
            self._cache = dumps(self.to_dict())
        return self._cache

    def to_dict(self) -> dict[str, Any]:
        get = f"{self.base_url}/v1/predictions/{self.id}"
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": self.logs,
            "output": self.output,
            "data_removed": False,
            "error": self.error,
            "status": self.status,
            "source": "api",
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "metrics": self.metrics,
            "urls": {"get": get, "cancel": get + "/cancel", "web": f"https://replicate.com/p/{self.id}"},
        }

    def record(self) -> str:
        """Everything a restarted emulator needs to carry this prediction on, as one JSON text."""
        if self._record is None:
            self._record = dumps(
                {
                    **self.to_dict(),
                    "key": self.key,
                    "base_url": self.base_url,
                    "start_due": self.start_due,
                    "complete_due": self.complete_due,
                    "digest": self.digest.hex(),
                    "digest_of_input": self.digest_of_input.hex(),
                    "webhook": self.webhook,
                    "events": sorted(self.events),
                    "hook_pending": self.hook_pending,
                }
            ).decode()
        return self._record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Prediction:
        prediction = cls(data["id"], data["key"], data["model"], data["version"], data["input"], data["base_url"], 0)
        prediction.status = data["status"]
        prediction.output = data["output"]
        prediction.error = data["error"]
        prediction.logs = data["logs"]
        prediction.metrics = data["metrics"]
        prediction.created_at = data["created_at"]
        prediction.started_at = data["started_at"]
        prediction.completed_at = data["completed_at"]
        prediction.start_due = float(data["start_due"])
        prediction.complete_due = float(data["complete_due"])
        prediction.digest = bytes.fromhex(data["digest"])
        prediction.digest_of_input = bytes.fromhex(data["digest_of_input"])
        prediction.webhook = data["webhook"]
        prediction.events = frozenset(data["events"])
        prediction.hook_pending = bool(data["hook_pending"])
        return prediction
