"""Emulators as real child processes (`fairway run emulator`), one per configuration.

- `emulator`: roomy limits, predictions of ~0.2 s, for SDK round trips and webhooks;
- `strict_emulator`: tiny limits on real time (time scale 1), so 429s come deterministically;
- `faulty_emulator`: seeded 5xx, resets and failed predictions;
- `started(tmp, limits, port=…, **settings)`: one of a test's own, e.g. to restart it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.common.embedded import free_port
from tests.support.processes import ServiceProcess

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Emulator:
    url: str
    process: ServiceProcess

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"


def _start(tmp: Path, limits: Mapping[str, object], port: int | None = None, **settings: object) -> Iterator[Emulator]:
    port = port or free_port()
    limits_path = tmp / "limits.yaml"
    limits_path.write_text(yaml.safe_dump(limits))
    env = {
        "FAIRWAY_EMULATOR_PORT": str(port),
        "FAIRWAY_EMULATOR_LIMITS": str(limits_path),
        "FAIRWAY_EMULATOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "FAIRWAY_EMULATOR_PREDICTION_SECONDS": "0.2",
        "FAIRWAY_EMULATOR_PREDICTION_START_SECONDS": "0.02",
        "FAIRWAY_EMULATOR_OPENAI_SECONDS": "0.01",
        "FAIRWAY_EMULATOR_OPENAI_SECONDS_PER_TOKEN": "0",
        "FAIRWAY_EMULATOR_IMAGE_SECONDS": "0.01",
        "FAIRWAY_EMULATOR_WEBHOOK_BACKOFF_SECONDS": "0.05",
        "FAIRWAY_EMULATOR_PREDICTION_SECONDS_BY_MODEL": json.dumps({"slow/model": 3600}),
    }
    env.update({f"FAIRWAY_EMULATOR_{k.upper()}": str(v) for k, v in settings.items()})
    process = ServiceProcess("emulator", env=env, log_dir=tmp).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(url + "/_emulator/health")
        yield Emulator(url, process)
    finally:
        process.stop()


started = contextlib.contextmanager(_start)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    limits = {"replicate": {"create_rpm": 6000, "read_rpm": 30000}}
    yield from _start(tmp_path_factory.mktemp("emulator"), limits, replicate_burst=1000)


@pytest.fixture(scope="session")
def strict_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    limits = {
        "replicate": {"create_rpm": 60, "read_rpm": 120},
        "openai": {
            "default": {"rpm": 3, "tpm": 100_000},
            "models": {
                "gpt-small-tpm": {"rpm": 100, "tpm": 200},
                "gpt-admission": {"rpm": 100, "tpm": 1000},
                "gpt-usage": {"rpm": 100, "tpm": 1000, "tokens_counted": "usage"},
                "gpt-short-output": {"rpm": 100, "tpm": 100_000, "max_output_tokens": 300},
            },
        },
    }
    yield from _start(tmp_path_factory.mktemp("strict"), limits, replicate_burst=3)


@pytest.fixture(scope="session")
def faulty_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    limits = {"replicate": {"create_rpm": 6000, "read_rpm": 30000}}
    yield from _start(
        tmp_path_factory.mktemp("faulty"),
        limits,
        replicate_burst=1000,
        seed=7,
        error_rate=0.25,
        reset_rate=0.25,
        prediction_failure_rate=0.5,
    )
