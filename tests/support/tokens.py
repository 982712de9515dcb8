"""Service tokens for tests: fixed ones per identity, as deployed ones would be, never "auth off".

    config = SchedulerConfig.model_validate({..., **service_env("scheduler")})
    channel = channel_as("gateway", address, principal=ADMIN)   # calls as the gateway, for the admin
    budgets = BudgetClient(address, token=TOKENS["predictor"])
"""

from __future__ import annotations

import grpc

from services.common.auth import ENVOY, GATEWAY, PREDICTOR, SCHEDULER, Principal, service_channel, token_hash
from services.stack.tokens import service_env as stack_service_env

TOKENS = {identity: f"test-{identity}-token" for identity in (GATEWAY, SCHEDULER, PREDICTOR, ENVOY)}
# Every identity: what a server of a test accepts (the method table still decides what each may call).
ACCEPTED = ",".join(f"{identity}:{token_hash(token)}" for identity, token in TOKENS.items())


def service_env(service: str) -> dict[str, str]:
    """A service's FAIRWAY_SERVICE_TOKEN and FAIRWAY_ACCEPTED_TOKENS, as `fairway up` gives them."""
    return stack_service_env(service, TOKENS)


def channel_as(identity: str, address: str, *, principal: Principal | None = None) -> grpc.aio.Channel:
    """A channel whose calls carry `identity`'s token (and name `principal`, if given)."""
    return service_channel(address, TOKENS[identity], metadata=principal.metadata if principal else ())
