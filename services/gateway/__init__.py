"""The HTTP API for frontends and operators, in front of the scheduler and the ratelimiter."""

from __future__ import annotations
