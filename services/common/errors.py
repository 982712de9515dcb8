"""The one exception base every Fairway error derives from."""

from __future__ import annotations


class FairwayError(Exception):
    """Base of all errors Fairway raises on purpose."""


class ConfigError(FairwayError):
    """A setting or a limits file is invalid; the message says which and why."""
