"""Each gRPC service exposes Prometheus metrics on its own HTTP port."""

from __future__ import annotations

from prometheus_client import start_http_server

from services.common.logging import get_logger

log = get_logger(__name__)


def start_metrics(host: str, port: int) -> None:
    """Serve `/metrics` in a background thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
