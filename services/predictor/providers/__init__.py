"""Provider adapters behind one small interface (`Provider`).

A third provider is one new module here with a `Provider` implementation, and one entry
in `build_providers`.
"""

from __future__ import annotations
