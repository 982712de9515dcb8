"""Pieces every Fairway service shares: logging, the gRPC server frame, limits, errors."""

from __future__ import annotations
