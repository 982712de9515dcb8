"""Errors the emulator answers with, in each provider's own body shape.

raise ReplicateError(404, "Not found.")
raise OpenAIError(400, "you must provide a model parameter", param="model")
"""

from __future__ import annotations

import json

from services.common.errors import FairwayError


class EmulatorError(FairwayError):
    """Base of the emulator's errors."""


class ApiError(EmulatorError):
    """An HTTP error response: raised by a handler, rendered by the app."""

    def __init__(self, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers or []

    def render(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class ReplicateError(ApiError):
    """Replicate's problem-details body: `{"title", "detail", "status"}`."""

    TITLES = {
        400: "Bad request",
        401: "Unauthenticated",
        404: "Not found",
        422: "Invalid input",
        429: "Too many requests",
        500: "Internal server error",
        502: "Bad gateway",
        503: "Service unavailable",
    }

    def __init__(self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None):
        title = self.TITLES.get(status, "Error")
        super().__init__(status, {"title": title, "detail": detail, "status": status}, headers)


class ReplicateThrottled(ApiError):
    """Replicate's 429 carries only `detail`."""

    def __init__(self, reset_seconds: int, headers: list[tuple[bytes, bytes]]):
        detail = f"Request was throttled. Your rate limit resets in ~{reset_seconds}s."
        super().__init__(429, {"detail": detail}, headers)


class OpenAIError(ApiError):
    """OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        error = {"message": message, "type": type, "param": param, "code": code}
        super().__init__(status, {"error": error}, headers)
