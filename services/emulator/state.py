"""The state file (`FAIRWAY_EMULATOR_STATE`): what outlives an emulator restart.

    state = StateFile("/var/tmp/emulator.json")
    data = state.read()                  # None before the first write
    state.write(text)                    # atomic: a reader sees the old file or the new one

It holds the predictions and the stats counts (and the webhook secret when none is set), as
one JSON object; the app builds the text (`EmulatorApp.state_text`) and writes it from a
thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError

FORMAT = 1


class StateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one writer at a time: the last text written wins

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read emulator state {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"emulator state {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"emulator state {self.path} is not a state file of format {FORMAT}")
        return data

    def write(self, text: str) -> None:
        """Replace the file with `text`: written to a temporary file beside it, synced, renamed over it."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
