"""The README's first command on a machine with Python, make and pip but no uv.

`make setup` (which `make run` and `make test` begin with) installs uv with pip when it is
missing, then the locked dependencies: from a fresh clone, in a venv without uv, with uv on
no PATH, the `fairway` command then works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_setup_installs_uv_when_it_is_missing(tmp_path: Path) -> None:
    clone = tmp_path / "fairway"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    assert not (venv / "bin" / "uv").exists()
    system = [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if Path(d).is_dir()]
    path = os.pathsep.join([str(venv / "bin"), *system])
    assert shutil.which("uv", path=path) is None, "uv must be on no PATH this test uses"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV", "VIRTUAL_ENV"))}
    env.update(PATH=path, HOME=str(Path.home()))
    setup = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    assert (venv / "bin" / "uv").exists(), "make setup installed uv into the Python it found"
    helped = subprocess.run([str(clone / ".venv" / "bin" / "fairway"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "up" in helped.stdout
