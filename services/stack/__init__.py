"""`fairway up`: the whole stack as child processes, with embedded defaults.

    fairway up        # prints the gateway URL and the admin key; Ctrl-C stops everything
    FAIRWAY_SCHEDULERS=2 FAIRWAY_PREDICTORS=4 FAIRWAY_RESTART=always fairway up   # a cluster stand-in

plan.py says what runs (names, ports, environments), children.py runs one child, supervisor.py
starts, watches, restarts and stops them.
"""

from __future__ import annotations

from services.stack.supervisor import up

__all__ = ["up"]
