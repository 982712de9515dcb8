"""How long things take, in provider seconds, derived from what is asked.

    latency = Latency(settings)
    latency.prediction(model, digest)       # log-normal around the model's median
    latency.completion(output_tokens, digest)

Each draw comes from a digest of the request (and the seed), not from arrival order, so a
run with the same inputs sees the same durations however the requests interleave.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from services.emulator.config import EmulatorSettings

_NORMAL = NormalDist()


def unit(digest: bytes, offset: int = 0) -> float:
    """A uniform number in (0, 1) from eight bytes of a digest."""
    raw = int.from_bytes(digest[offset : offset + 8], "big")
    return (raw + 0.5) / 2**64


def log_normal(median: float, sigma: float, u: float) -> float:
    return median * math.exp(sigma * _NORMAL.inv_cdf(u)) if median > 0 else 0.0


class Latency:
    def __init__(self, settings: EmulatorSettings) -> None:
        self._s = settings

    def prediction(self, model: str, digest: bytes) -> float:
        median = self._s.prediction_seconds_by_model.get(model, self._s.prediction_seconds)
        return log_normal(median, self._s.prediction_sigma, unit(digest, 8))

    def prediction_start(self) -> float:
        return self._s.prediction_start_seconds

    def api(self) -> float:
        return self._s.api_seconds

    def completion(self, output_tokens: int, digest: bytes) -> float:
        median = self._s.openai_seconds + self._s.openai_seconds_per_token * output_tokens
        return log_normal(median, self._s.openai_sigma, unit(digest, 16))

    def image(self, digest: bytes) -> float:
        return log_normal(self._s.image_seconds, self._s.openai_sigma, unit(digest, 16))
