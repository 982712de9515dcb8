"""`make bench`: run every benchmark module (or the ones named), each in its own process.

    python -m bench                 # all
    python -m bench ratelimiter_bench
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULES = ("emulator_load", "ratelimiter_bench", "scheduler_bench", "predictor_bench", "e2e_bench")


def main(argv: list[str]) -> int:
    names = argv or [m for m in MODULES if (Path(__file__).parent / f"{m}.py").exists()]
    failed = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
