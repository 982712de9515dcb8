"""`fairway up`: the whole stack as child processes, with embedded defaults.

    fairway up        # prints the gateway URL and the admin key; Ctrl-C stops everything
"""

from __future__ import annotations

from services.stack.supervisor import up

__all__ = ["up"]
