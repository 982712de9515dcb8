"""A submitted body → the scheduler's SubmitJobRequest, in steps that each take little time.

The work is proportional to the job (up to 100,000 items and a 10 MiB body: seconds of CPU
on a slow host), so it runs in a worker thread, and in steps that each hold the GIL briefly:
the body is parsed in bounded steps (`bodies`), items are validated, encoded and hashed a
slice at a time, so the event loop gets the GIL back between steps and keeps answering.

The cyclic garbage collector is paused meanwhile. What a submission builds (JSON values,
models, messages) holds no cycle: reference counting frees all of it. But the collector
runs whenever enough objects were allocated, and then walks every live object holding the
GIL: over the ~500,000 objects of a 100,000-item job, one pass stopped the event loop for
up to 180 ms (measured on a 2-core host; with it paused, no stop over 30 ms).
"""

from __future__ import annotations

import gc
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fairway.scheduler.v1 import scheduler_pb2
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from services.gateway.bodies import parse_body
from services.gateway.errors import ApiError
from services.gateway.job_schema import PROMPT, REPLICATE_MODEL
from services.gateway.schemas import INT32_MAX, MAX_ITEMS_PER_JOB, OPERATIONS, ItemIn, JobSubmit

# Items validated per call into pydantic (~3 ms for 1000 small ones on a slow host).
SLICE = 500

_ITEMS = TypeAdapter(list[ItemIn])
# Stands in for the items while the rest of the job is validated.
_PLACEHOLDER = ItemIn(ref="", input={})


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, so reordering a body changes nothing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical_pieces(job: JobSubmit) -> Iterator[str]:
    """`canonical_json(job.model_dump(mode="json"))`, an item at a time."""
    head = job.model_dump(mode="json", exclude={"items"})
    yield "{"
    for n, key in enumerate(sorted([*head, "items"])):
        yield ("," if n else "") + canonical_json(key) + ":"
        if key != "items":
            yield canonical_json(head[key])
            continue
        yield "["
        for i, item in enumerate(job.items):
            yield ("," if i else "") + canonical_json(item.model_dump(mode="json"))
        yield "]"
    yield "}"


def request_hash(job: JobSubmit) -> str:
    """What an Idempotency-Key is bound to: the submitted job with its defaults filled in."""
    digest = hashlib.sha256()
    for piece in _canonical_pieces(job):
        digest.update(piece.encode())
    return digest.hexdigest()


def validate(document: Any) -> JobSubmit:
    """The job, validated a slice of items at a time; errors as FastAPI reports a body's."""
    raw_items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(raw_items, list) or not raw_items:
        # Not a list of items to slice: the whole document at once (which names the error).
        return _validated(lambda: JobSubmit.model_validate(document), ("body",))
    head = _validated(lambda: JobSubmit.model_validate({**document, "items": [_PLACEHOLDER]}), ("body",))
    items: list[ItemIn] = []
    errors: list[Any] = []
    for start in range(0, len(raw_items), SLICE):
        try:
            items.extend(_ITEMS.validate_python(raw_items[start : start + SLICE]))
        except ValidationError as exc:
            errors.extend(
                {**e, "loc": ("body", "items", start + int(e["loc"][0]), *e["loc"][1:])} for e in exc.errors()
            )
    release(raw_items)
    if errors:
        raise RequestValidationError(errors)
    return head.model_copy(update={"items": items})


def release(values: list[Any]) -> None:
    """Empty a long list a slice at a time: dropped at once, its values would be freed in
    one step, which for 100,000 items holds the GIL for ~50 ms."""
    while values:
        del values[-SLICE:]


def _validated(make: Callable[[], JobSubmit], prefix: tuple[str, ...]) -> JobSubmit:
    try:
        job = make()
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()]) from None
    return job


def _required(path: str, what: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{path}: {what}")


def _token_cap(data: dict[str, Any], key: str, where: str) -> None:
    """`key`, when present, is a whole number from 1 to INT32_MAX; 5.0 is sent on as 5 (JSON
    Schema counts it an integer; a provider may not)."""
    if key not in data:
        return
    value = data[key]
    if isinstance(value, float) and value.is_integer():
        value = data[key] = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= INT32_MAX):
        raise _required(f"{where}.{key}", f"must be a whole number from 1 to {INT32_MAX}")


def check_items(job: JobSubmit) -> None:
    """The input shape each operation needs (the provider's own validation comes later); the
    OpenAPI document says the same (job_schema.py)."""
    if job.provider == "replicate" and not REPLICATE_MODEL.fullmatch(job.model):
        raise _required("model", "a Replicate model is owner/name or owner/name:version")
    for n, item in enumerate(job.items):
        where = f"items[{n}].input"
        data = item.input
        if job.operation == "chat":
            messages = data.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _required(f"{where}.messages", "an openai chat item needs a non-empty list of messages")
            _token_cap(data, "max_tokens", where)
        elif job.operation == "response":
            if data.get("input") in (None, "", []):
                raise _required(f"{where}.input", "an openai response item needs an input")
            _token_cap(data, "max_output_tokens", where)
        elif job.operation == "image":
            prompt = data.get("prompt")
            if not isinstance(prompt, str) or not PROMPT.search(prompt):
                raise _required(f"{where}.prompt", "an openai image item needs a prompt that is not blank")


def _json(value: Any) -> str:
    # Validation left no NaN or infinity: this cannot fail.
    return json.dumps(value, allow_nan=False)


class _CollectorPause:
    """Pauses the cyclic collector while any caller is inside; restores it after the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._was_enabled:
                    gc.enable()


collector_paused = _CollectorPause()


def prepare(body: bytes, tenant: str, idempotency_key: str | None) -> scheduler_pb2.SubmitJobRequest:
    """The scheduler's request for a submitted body, or the ApiError / RequestValidationError
    that refuses it. Synchronous and slow for a large job: run it in a worker thread."""
    with collector_paused():
        return _prepare(body, tenant, idempotency_key)


def _prepare(body: bytes, tenant: str, idempotency_key: str | None) -> scheduler_pb2.SubmitJobRequest:
    job = validate(parse_body(body, max_items=MAX_ITEMS_PER_JOB))
    allowed = OPERATIONS[job.provider]
    if job.operation is None:
        job = job.model_copy(update={"operation": allowed[0]})
    elif job.operation not in allowed:
        raise _required("operation", f"{job.provider} offers {', '.join(allowed)}, not {job.operation}")
    check_items(job)
    request = scheduler_pb2.SubmitJobRequest(
        tenant=tenant,
        provider=job.provider,
        model=job.model,
        operation=job.operation or "",
        priority=job.priority,
        metadata_json="" if job.metadata is None else _json(job.metadata),
        idempotency_key=idempotency_key or "",
        request_hash=request_hash(job) if idempotency_key else "",
    )
    # One item at a time: a message built from a list of 100,000 is one ~50 ms step.
    for item in job.items:
        request.items.add(ref=item.ref, input_json=_json(item.input))
    release(job.items)
    return request
