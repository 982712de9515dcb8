"""Injected faults, drawn per request from a generator seeded by `FAIRWAY_EMULATOR_SEED`.

    faults = Faults(settings)
    fault = faults.draw()       # Fault.NONE almost always; ERROR, RESET or SLOW at their rates

A faulted request has consumed its budget (as a real provider counts it) but has no other
effect: an errored create makes no prediction. Prediction failures are not drawn here but
from the prediction's own digest (see `replicate_api`), so they do not depend on ordering.
"""

from __future__ import annotations

import enum
import random

from services.emulator.config import EmulatorSettings


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"  # a 5xx with the provider's body
    RESET = "reset"  # the connection is dropped without a response
    SLOW = "slow"  # the normal answer, `slow_seconds` later


class Faults:
    def __init__(self, settings: EmulatorSettings) -> None:
        self._error = settings.error_rate
        self._reset = self._error + settings.reset_rate
        self._slow = self._reset + settings.slow_rate
        self._seed = settings.seed
        self._rng = random.Random(settings.seed)
        self.slow_seconds = settings.slow_seconds

    @property
    def active(self) -> bool:
        return self._slow > 0

    def draw(self) -> Fault:
        if self._slow <= 0:
            return Fault.NONE
        u = self._rng.random()
        if u < self._error:
            return Fault.ERROR
        if u < self._reset:
            return Fault.RESET
        if u < self._slow:
            return Fault.SLOW
        return Fault.NONE

    def error_status(self) -> int:
        return self._rng.choice((500, 502, 503))

    def reseed(self) -> None:
        self._rng.seed(self._seed)
