"""A webhook receiver on a thread: records every delivery, can fail the first N of them.

with WebhookReceiver(fail_first=2) as hooks:
    ... create a prediction with webhook=hooks.url ...
    deliveries = hooks.wait_for(lambda d: any(x.event_status == "succeeded" for x in d))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from services.common.embedded import free_port


@dataclass
class Delivery:
    headers: dict[str, str]
    body: str
    answered: int

    @property
    def prediction(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def event_status(self) -> str:
        return str(self.prediction["status"])


class WebhookReceiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.deliveries: list[Delivery] = []
        self._fail_left = fail_first
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                with receiver._changed:
                    status = 500 if receiver._fail_left > 0 else 200
                    receiver._fail_left -= 1
                    receiver.deliveries.append(Delivery(dict(self.headers.items()), body, status))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def wait_for(self, done: Callable[[list[Delivery]], bool], timeout_s: float = 20.0) -> list[Delivery]:
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.deliveries), timeout_s):
                raise TimeoutError(f"webhook deliveries so far: {[d.event_status for d in self.deliveries]}")
            return list(self.deliveries)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
