"""The control law: how what the provider says about its limit changes our planned rate.

Fairway plans against a budget of `utilization` x the published limit, but another service
may share the provider key. Predictors report the provider's rate-limit headers and 429s;
every replica reads the resulting state from Redis, so the correction is shared.

For each dimension (requests, tokens) with headers `limit` L, `remaining` R:

    provider_used = 1 - R / L                        (fraction of its window in use)
    ours          = our usage last minute / published limit
    foreign       = provider_used - ours              (what someone else uses)
    target        = (utilization - foreign) / utilization      when foreign > TOLERANCE

and, if the provider's L is below the published limit we were configured with,
target <= L / published. The rate factor drops at once to the lowest target (never below
`min_rate_factor`); it is never raised by a report but recovers linearly, from 0 to 1 in
`recovery_s` seconds, so a persisting shortage keeps it down (each report lowers it again)
and a passed one lets the full rate return gradually.

A 429 is a measurement too. At the moment of a 429 the provider's window is full, so what
we got through in it — our grants in the provider's minute that it did not refuse, `N` —
is what the provider leaves us; anyone else sharing the key holds about `limit - N`:

    learned = N / published                         (our accepted share of the window)
    factor  = max(learned, factor x DECREASE)        never raised, at most halved per hold

so the planned rate becomes `utilization x N`: the same margin below what is left as below a
limit we have to ourselves. Later 429s of the same hold period (calls of the same burst, or
sent when the cooldown ended) each take one call off that measure rather than measuring
again: a fresh measure would count our own cooldown's pause as room someone else took.
The factor is then *held* at that level for `hold_s` (55 provider seconds by default: nothing
is learned about the other client until its share is measured again), and recovers after that,
fast (`recovery_s`, 10 s from 0 to 1). If the other client stays, the recovery overfills the
window within seconds and the next 429 re-measures it: about one 429 a minute. When it leaves,
the full rate is back within the hold plus `recovery_s x (1 - factor)` of its leaving — a
rolling window keeps its calls for a minute anyway, so nothing could be sent sooner without a
429. A 429 also starts a cooldown shared by all replicas: the provider's
retry-after, else its reset time, else `default_cooldown_s` — and at least until our own calls
beyond the new plan have left the provider's minute (sent before we knew the other client was
there, they keep the window full for up to a minute: every call sent before then would be
refused too). `remaining == 0` starts a
cooldown until the provider's reset, before any 429 happens.
"""

from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.05  # provider-side counting skew (calls in flight) we do not react to
DECREASE = 0.5  # the most one 429 (or one hold period's 429s) takes off the factor
MIN_HOLD_S = 2.0  # at least: 429s of one burst arrive within a round trip of each other
MAX_COOLDOWN_S = 120.0  # a malformed header must not stop a budget for long


@dataclass(frozen=True)
class Observation:
    throttled: bool = False
    retry_after_s: float = 0.0
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float = 0.0
    reset_tokens_s: float = 0.0
    limit_requests: int | None = None
    limit_tokens: int | None = None


@dataclass(frozen=True)
class Correction:
    target_factor: float | None  # None: no evidence of a shortage
    multiplier: float  # 1.0: no multiplicative decrease
    cooldown_s: float
    hold_s: float
    learned_factor: float | None = None  # a 429's measure of the share left to us


@dataclass(frozen=True)
class OwnUsage:
    """What Fairway itself used, against the published limits (same units as the provider's)."""

    requests_fraction: float  # our requests the provider accepted in its minute / published rpm
    tokens_fraction: float
    published_rpm: float  # per the provider's minute (no time scale)
    published_tpm: float
    window_s: float = 60.0  # the provider's minute in real seconds
    # Until enough of our calls have left the provider's minute for the plan after a 429 to fit.
    drain_s: float = 0.0


def correct(
    obs: Observation, own: OwnUsage, *, utilization: float, default_cooldown_s: float, hold_s: float | None = None,
) -> Correction:
    """What one observation changes; `own` must be measured over the provider's minute.
    `hold_s`: how long a 429's measure holds (default: the provider's minute)."""
    targets = [
        _target(obs.remaining_requests, obs.limit_requests, own.published_rpm, own.requests_fraction, utilization),
        _target(obs.remaining_tokens, obs.limit_tokens, own.published_tpm, own.tokens_fraction, utilization),
    ]
    found = [t for t in targets if t is not None]
    target = min(found) if found else None

    cooldown = 0.0
    if obs.throttled:
        cooldown = obs.retry_after_s or max(obs.reset_requests_s, obs.reset_tokens_s) or default_cooldown_s
    if obs.remaining_requests is not None and obs.remaining_requests <= 0:
        cooldown = max(cooldown, obs.reset_requests_s or default_cooldown_s)
    if obs.remaining_tokens is not None and obs.remaining_tokens <= 0:
        cooldown = max(cooldown, obs.reset_tokens_s or default_cooldown_s)
    if obs.throttled:
        cooldown = max(cooldown, min(own.drain_s, own.window_s))
    cooldown = min(max(cooldown, 0.0), MAX_COOLDOWN_S)
    if not obs.throttled:
        return Correction(target_factor=target, multiplier=1.0, cooldown_s=cooldown, hold_s=MIN_HOLD_S)
    # The dimension that filled the provider's window is the one we use most of.
    learned = max(own.requests_fraction, own.tokens_fraction if own.published_tpm else 0.0)
    return Correction(
        target_factor=target,
        multiplier=DECREASE,
        cooldown_s=cooldown,
        hold_s=max(cooldown, MIN_HOLD_S, own.window_s if hold_s is None else hold_s),
        learned_factor=max(0.0, learned),
    )


def _target(
    remaining: int | None, limit: int | None, published: float, ours: float, utilization: float
) -> float | None:
    if remaining is None or published <= 0:
        return None
    provider_limit = float(limit) if limit is not None and limit > 0 else published
    # Everything below as fractions of the provider's own limit.
    provider_used = 1.0 - max(0.0, min(float(remaining), provider_limit)) / provider_limit
    foreign = provider_used - ours * published / provider_limit
    share = max(0.0, (utilization - foreign) / utilization) if foreign > TOLERANCE else 1.0
    target = min(1.0, provider_limit / published) * share
    return target if target < 1.0 else None
