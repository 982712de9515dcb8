"""The internal service tokens of `fairway up`: made once, kept in FAIRWAY_HOME, given to each child.

    tokens = ensure_tokens(config.home)          # {"gateway": "...", "scheduler": ..., "predictor": ...}
    env = {**shared, **service_env("scheduler", tokens)}
    # FAIRWAY_SERVICE_TOKEN (what it presents) and FAIRWAY_ACCEPTED_TOKENS (whom it accepts)

Each caller gets a token of its own and each server the hashes of its callers' tokens, as in
Kubernetes (docs/design/security.md), so a local stack checks what a cluster checks.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from services.common.auth import GATEWAY, PREDICTOR, SCHEDULER, callers, token_hash

TOKENS_FILE = "service_tokens.json"
# The services that call others (and so present a token), and the ones that check them.
CALLERS = (GATEWAY, SCHEDULER, PREDICTOR)
SERVES: Mapping[str, tuple[str, ...]] = {
    "scheduler": ("fairway.scheduler.v1.Scheduler", "fairway.scheduler.v1.Dispatch"),
    "ratelimiter": ("fairway.ratelimiter.v1.RateLimiter", "envoy.service.ratelimit.v3.RateLimitService"),
}


def ensure_tokens(home: Path) -> dict[str, str]:
    """Each caller's token (identity -> token): read from `home`, or made there (mode 0600) the first time."""
    path = home / TOKENS_FILE
    tokens: dict[str, str] = {}
    if path.exists():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            tokens = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str) and v}
    if all(identity in tokens for identity in CALLERS):
        return tokens
    for identity in CALLERS:
        tokens.setdefault(identity, f"fw_{identity}_" + secrets.token_urlsafe(32))
    home.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then renamed: never a file with part of them, never readable by others.
    tmp = path.with_name(f".{TOKENS_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(tokens, out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return tokens


def service_env(service: str, tokens: Mapping[str, str]) -> dict[str, str]:
    """The authentication settings of one service of the stack ("gateway", "scheduler", ...):
    its own token if it calls others, the hashes of its callers' tokens if it serves them."""
    env: dict[str, str] = {}
    if service in tokens:
        env["FAIRWAY_SERVICE_TOKEN"] = tokens[service]
    if service in SERVES:
        accepted = sorted(callers(SERVES[service]) & tokens.keys())
        env["FAIRWAY_ACCEPTED_TOKENS"] = ",".join(f"{identity}:{token_hash(tokens[identity])}" for identity in accepted)
    return env
