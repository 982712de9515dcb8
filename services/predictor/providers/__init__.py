"""Provider adapters behind one small interface (`base.Provider`).

A third provider is one new module here with a `Provider` implementation, and one entry
in `build_providers`.
"""

from __future__ import annotations

from services.predictor.config import PredictorConfig
from services.predictor.providers.base import CallGate, Provider
from services.ratelimiter.client import BudgetClient


def build_providers(config: PredictorConfig, budgets: BudgetClient, gate: CallGate) -> dict[str, Provider]:
    """One adapter (and so one SDK client) per provider for the whole process."""
    from services.predictor.providers.openai_provider import OpenAIProvider
    from services.predictor.providers.replicate_provider import ReplicateProvider

    return {
        "replicate": ReplicateProvider(config, budgets, gate),
        "openai": OpenAIProvider(config, budgets, gate),
    }
