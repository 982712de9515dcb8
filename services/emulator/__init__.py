"""The provider emulator: Replicate and OpenAI HTTP APIs on one port, for tests and demos.

fairway run emulator          # FAIRWAY_EMULATOR_PORT=8090, see docs/emulator.md
"""

from __future__ import annotations
