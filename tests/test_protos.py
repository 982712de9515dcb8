"""The generated gRPC code in gen/ is exactly what `make protos` makes of protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"), f"--python_out={out}",
         f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}", *protos],
        check=True, cwd=ROOT / "protos", env=env, capture_output=True,
    )


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    _generate(tmp_path)
    expected = _files(tmp_path)
    committed = _files(ROOT / "gen")
    assert expected, "no proto produced any code"
    stale = sorted(name for name in expected if committed.get(name) != expected[name])
    extra = sorted(set(committed) - set(expected))
    assert not stale and not extra, (
        f"gen/ is out of date with protos/ (run `make protos`): differs {stale}, no longer generated {extra}"
    )
