"""Predictors: workers that take items from the scheduler and call the providers."""

from __future__ import annotations
