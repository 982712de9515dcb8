"""What `fairway up` runs: every child's name, service, ports and environment.

    specs = plan(config, env, emulated_providers(config))
    for tier in tiers(specs): ...start the tier's replicas at once, wait for them...

A pure function of the settings, so that a restart gives a child exactly what it had.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from services.stack.config import StackConfig

# Replica i of a gRPC service listens on its base port + 10 * i: the three services' defaults
# (50051, 50052, 50053, and 9101-9103 for metrics) are 1 apart, so a stride of 1 would overlap them.
GRPC_STRIDE = 10
# Gateway i on its base + i (8080, 8081, ...): a stride of 10 would meet the emulator's 8090 at once.
GATEWAY_STRIDE = 1
LOOPBACK = "127.0.0.1"
# In order of start: each tier needs the ones before it (and stops after them, in reverse).
ORDER = ("emulator", "ratelimiter", "scheduler", "predictor", "gateway")
# Who calls whom inside the stack: each caller has a token of its own, each gRPC server accepts
# its callers' (docs/operations.md, "Internal tokens").
CALLERS = ("gateway", "scheduler", "predictor")
ACCEPTS = {"scheduler": ("gateway", "predictor"), "ratelimiter": ("scheduler", "predictor", "gateway")}


@dataclass(frozen=True)
class ChildSpec:
    name: str  # "scheduler", or "scheduler-2" when there are several
    service: str  # what `fairway run` runs
    host: str
    port: int  # the port whose listening says it is up
    env: Mapping[str, str] = field(repr=False)
    ports: tuple[int, ...] = ()  # every port it listens on (metrics too)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http(self) -> bool:
        return self.service in ("gateway", "emulator")

    @property
    def shown(self) -> str:
        """The address as a person uses it: a URL for HTTP services, host:port for gRPC."""
        return f"http://{self.address}" if self.http else self.address


def replica_name(service: str, i: int, n: int) -> str:
    return f"{service}-{i + 1}" if n > 1 else service


def grpc_target(ports: Sequence[int]) -> str:
    """A gRPC target for every replica: the client's channel spreads calls over them and goes
    around one that is down (its load-balancing policy decides how)."""
    if len(ports) == 1:
        return f"{LOOPBACK}:{ports[0]}"
    return "ipv4:" + ",".join(f"{LOOPBACK}:{p}" for p in ports)


def service_tokens() -> dict[str, str]:
    """A fresh token for each caller identity, for one run of the stack (its children restart
    with the same ones; the next run has new ones)."""
    return {identity: secrets.token_urlsafe(32) for identity in CALLERS}


def service_auth_env(service: str, tokens: Mapping[str, str]) -> dict[str, str]:
    """Internal authentication for one child (docs/operations.md, "Internal tokens"): the
    `FAIRWAY_SERVICE_TOKEN` it presents to the services it calls, and for a gRPC server the
    `FAIRWAY_ACCEPTED_TOKENS` of its callers (`identity:sha256hex,...`: hashes, so no server holds
    another's token). A service that does not check them yet ignores both."""
    env = {}
    if service in tokens:
        env["FAIRWAY_SERVICE_TOKEN"] = tokens[service]
    if service in ACCEPTS:
        env["FAIRWAY_ACCEPTED_TOKENS"] = ",".join(
            f"{caller}:{hashlib.sha256(tokens[caller].encode()).hexdigest()}" for caller in ACCEPTS[service])
    return env


def _metrics(base: int, i: int) -> str:
    return str(base + GRPC_STRIDE * i) if base else "0"


def plan(cfg: StackConfig, env: Mapping[str, str], emulated: Mapping[str, str],
         tokens: Mapping[str, str]) -> list[ChildSpec]:
    """Every child of the stack, in order of start. `env` is what all share (the database, Redis,
    the admin key...), `emulated` what points providers without a key at the emulator, `tokens`
    the internal ones (`service_tokens`)."""
    ports = {
        "scheduler": [cfg.scheduler_port + GRPC_STRIDE * i for i in range(cfg.schedulers)],
        "ratelimiter": [cfg.ratelimiter_port + GRPC_STRIDE * i for i in range(cfg.ratelimiters)],
        "predictor": [cfg.predictor_port + GRPC_STRIDE * i for i in range(cfg.predictors)],
        "gateway": [cfg.gateway_port + GATEWAY_STRIDE * i for i in range(cfg.gateways)],
    }
    shared = {**env, "FAIRWAY_SCHEDULER_ADDR": grpc_target(ports["scheduler"]),
              "FAIRWAY_RATELIMITER_ADDR": grpc_target(ports["ratelimiter"])}
    specs: list[ChildSpec] = []
    if emulated:
        emulator_env = {**shared, "FAIRWAY_EMULATOR_HOST": cfg.emulator_host,
                        "FAIRWAY_EMULATOR_PORT": str(cfg.emulator_port)}
        if not cfg.emulator_limits and cfg.limits:
            emulator_env["FAIRWAY_EMULATOR_LIMITS"] = cfg.limits
        # The emulated provider keeps its predictions across restarts of the stack, as the
        # real one outlives its clients: an item in flight at Ctrl-C resumes its prediction.
        emulator_env.setdefault("FAIRWAY_EMULATOR_STATE", str(cfg.home / "emulator.json"))
        specs.append(ChildSpec("emulator", "emulator", cfg.emulator_host, cfg.emulator_port, emulator_env,
                               (cfg.emulator_port,)))
        shared.update(emulated)
        # Budgets count in the provider's time: the emulator's, when it stands in for both.
        both = "OPENAI_BASE_URL" in emulated and "REPLICATE_BASE_URL" in emulated
        if both and cfg.emulator_time_scale and not cfg.ratelimiter_time_scale:
            shared["FAIRWAY_RATELIMITER_TIME_SCALE"] = cfg.emulator_time_scale
    metrics = {"scheduler": cfg.scheduler_metrics_port, "ratelimiter": cfg.ratelimiter_metrics_port,
               "predictor": cfg.predictor_metrics_port}
    for service in ORDER[1:]:
        n = len(ports[service])
        for i, port in enumerate(ports[service]):
            own = {f"FAIRWAY_{service.upper()}_PORT": str(port), **service_auth_env(service, tokens)}
            listens = [port]
            host = LOOPBACK
            if service == "gateway":
                host = cfg.gateway_host
                own["FAIRWAY_GATEWAY_HOST"] = host
            else:
                own[f"FAIRWAY_{service.upper()}_METRICS_PORT"] = _metrics(metrics[service], i)
                listens += [int(own[f"FAIRWAY_{service.upper()}_METRICS_PORT"])]
            specs.append(ChildSpec(replica_name(service, i, n), service, host, port, {**shared, **own},
                                   tuple(p for p in listens if p)))
    return specs


def tiers(specs: Sequence[ChildSpec]) -> Iterator[list[ChildSpec]]:
    """The children by service, in order of start: a service's replicas start together."""
    for _, tier in groupby(specs, key=lambda s: s.service):
        yield list(tier)


def port_clashes(specs: Sequence[ChildSpec]) -> list[str]:
    """Ports two children would both listen on, described for a person."""
    owner: dict[int, str] = {}
    clashes = []
    for spec in specs:
        for port in spec.ports:
            if port in owner:
                clashes.append(f"{spec.name} and {owner[port]} would both listen on port {port}")
            owner.setdefault(port, spec.name)
    return clashes


def banner(specs: Sequence[ChildSpec], admin_key: str, restart: str) -> str:
    """What `fairway up` prints on stdout once every child is up: each replica's address."""
    by_service = {service: [s.shown for s in specs if s.service == service] for service in ORDER}
    gateway = by_service["gateway"][0]
    lines = ["", "[bold]Fairway is up.[/bold]", f"  gateway:     {'  '.join(by_service['gateway'])}",
             f"  admin key:   {admin_key}", f"  status:      {gateway}/"]
    lines += [f"  {service + ':':<12} {'  '.join(shown)}" for service, shown in by_service.items()
              if shown and service != "gateway"]
    restarts = ("a child that dies is restarted (FAIRWAY_RESTART=always)" if restart == "always"
                else "a child that dies stops the stack (FAIRWAY_RESTART=always restarts it)")
    lines += [f"  restarts:    {restarts}", "", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)
