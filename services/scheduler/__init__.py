"""The scheduler: tenants, jobs, items, credits; fair dispatch of items to predictors."""

from __future__ import annotations
