"""What every `fairway run SERVICE` does before serving: read its settings or say clearly why not.

    config = load_settings(SchedulerConfig)
    if config is None:
        return 2        # the reasons are already logged, one line per bad setting
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError

from services.common.errors import ConfigError
from services.common.logging import get_logger

log = get_logger("services.settings")
S = TypeVar("S")


def load_settings(factory: Callable[..., S]) -> S | None:
    # Name the environment variable as the operator sets it, prefix included.
    prefix = str(getattr(factory, "model_config", {}).get("env_prefix", "")).upper()
    fields = getattr(factory, "model_fields", {})
    try:
        return factory()
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            # A default found wrong is reported by field name: name its variable instead.
            alias = getattr(fields.get(loc[0]), "validation_alias", None) if loc else None
            if isinstance(alias, str):
                loc[0] = alias
            where = (".".join(loc) or "settings").upper()
            if prefix and not where.startswith(prefix):
                where = prefix + where
            log.error("bad setting %s: %s", where, error["msg"])
    except ConfigError as exc:
        log.error("%s", exc)
    return None
