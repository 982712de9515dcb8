"""The operator's status page in a real browser (Debian's headless Chromium, driven by
Playwright) in front of the whole stack: a visitor without the key sees nothing; with it, a
job submitted through the API shows its progress bar moving and the charts changing while it
runs, its failures, and the predictor that runs it. Screenshots are kept (the folder is printed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import fresh_database
from tests.e2e.stack import E2EStack, wait_terminal

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("FAIRWAY_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
TIME_SCALE = 5.0  # a provider minute in 12 real seconds
ITEMS = 120  # at 60 creates a provider minute: about 25 s of dispatch at the budget's limit
WAIT_MS = 90_000


@pytest.fixture
def database_url(postgres_dsn: str) -> str:
    # Before the browser: Playwright's sync API keeps an event loop running in this thread.
    return asyncio.run(fresh_database(postgres_dsn))


@pytest.fixture
def browser(database_url: str) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"{CHROMIUM} is missing, though .ci/run installs Debian's chromium package as root")
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does, as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots() -> Path:
    folder = ARTIFACTS / "status-page"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"status page screenshots: {folder}")
    return folder


def job_state(page: Page, job_id: str) -> dict[str, Any]:
    """What the page shows now: the job's bar, the charts' sums, the budget's rates."""
    found: dict[str, Any] = page.evaluate(
        """(id) => {
          const row = document.querySelector(`#jobs tr[data-job="${id}"]`);
          const bar = row && row.querySelector('[role=progressbar]');
          const budget = document.querySelector('#budgets tr[data-budget="replicate:create"]');
          const line = document.querySelector('#dispatch-chart path[data-series="store-a"]');
          return {
            progress: bar ? Number(bar.getAttribute('aria-valuenow')) : -1,
            status: row ? row.dataset.status : null,
            budgetSum: Number(document.querySelector('#budget-chart svg')?.dataset.sum || 0),
            dispatchLast: line ? Number(line.dataset.last || 0) : 0,
            rpmNow: budget ? Number(budget.querySelector('[data-rpm-now]').dataset.rpmNow) : 0,
            failures: document.querySelectorAll('#failures tr[data-item]').length,
          };
        }""",
        job_id,
    )
    return found


def test_the_status_page_follows_a_job_live(
    tmp_path: Path, database_url: str, redis_url: str, browser: Browser, shots: Path
) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text("replicate: {create_rpm: 60, read_rpm: 3000}\n")
    stack = E2EStack(
        tmp_path, database_url, redis_url, time_scale=TIME_SCALE,
        emulator={"FAIRWAY_EMULATOR_PREDICTION_FAILURE_RATE": "0.1", "FAIRWAY_EMULATOR_SEED": "7"},
    )
    stack.set_limits(limits)
    with stack:
        _, client = stack.create_tenant("store-a", credits=10_000)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        elsewhere: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(stack.gateway_url) else elsewhere.append(r.url))

        # Without the key: a form, and nothing about any tenant.
        page.goto(stack.gateway_url + "/")
        page.wait_for_selector("#login:not([hidden])")
        assert page.is_hidden("#dash") and "store-a" not in page.content()
        page.fill("#key", "not-the-key")
        page.click("#login-form button")
        page.wait_for_function("() => document.querySelector('#login-error').textContent.length > 0")
        assert page.is_visible("#login") and "store-a" not in page.content()
        page.screenshot(path=shots / "0-login.png")

        page.fill("#key", stack.admin_key)
        page.click("#login-form button")
        page.wait_for_selector('#predictors tr[data-predictor="predictor-1"]', timeout=WAIT_MS)
        assert page.evaluate("sessionStorage.getItem('fairway-admin-key')") == stack.admin_key

        job = client.post("/v1/jobs", json={
            "provider": "replicate", "model": "google/nano-banana",
            "items": [{"ref": f"photo-{i}", "input": {"prompt": f"a product photo #{i}"}} for i in range(ITEMS)],
        })
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]

        # While it runs: a bar part-way, budget use and the tenant's dispatch drawn.
        page.wait_for_function(
            """(id) => {
              const bar = document.querySelector(`#jobs tr[data-job="${id}"] [role=progressbar]`);
              const now = Number(bar?.getAttribute('aria-valuenow') ?? -1);
              const line = document.querySelector('#dispatch-chart path[data-series="store-a"]');
              return now > 0 && now < 60 && Number(document.querySelector('#budget-chart svg').dataset.sum) > 0
                && Number(line?.dataset.last || 0) > 0;
            }""",
            arg=job_id, timeout=WAIT_MS,
        )
        first = job_state(page, job_id)
        page.screenshot(path=shots / "1-running.png", full_page=True)
        assert first["status"] == "PROCESSING" and first["rpmNow"] > 0, first

        # Moments later: the bar has moved on and the charts have grown.
        page.wait_for_function(
            """([id, progress, budget]) => {
              const bar = document.querySelector(`#jobs tr[data-job="${id}"] [role=progressbar]`);
              return Number(bar.getAttribute('aria-valuenow')) >= progress + 15
                && Number(document.querySelector('#budget-chart svg').dataset.sum) > budget;
            }""",
            arg=[job_id, first["progress"], first["budgetSum"]], timeout=WAIT_MS,
        )
        second = job_state(page, job_id)
        page.screenshot(path=shots / "2-later.png", full_page=True)
        assert second["progress"] > first["progress"] and second["budgetSum"] > first["budgetSum"], (first, second)

        # At the end: the bar is full, the job's status is the API's, and its failures are listed.
        final = wait_terminal(client, job_id)
        failed = final["counts"]["FAILED"]
        page.wait_for_function(
            """([id, status, failed]) => {
              const row = document.querySelector(`#jobs tr[data-job="${id}"]`);
              return row && row.dataset.status === status
                && row.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '100'
                && document.querySelectorAll('#failures tr[data-item]').length === Math.min(failed, 50);
            }""",
            arg=[job_id, final["status"], failed], timeout=WAIT_MS,
        )
        page.screenshot(path=shots / "3-finished.png", full_page=True)
        assert failed > 0, "the emulator fails a tenth of predictions: some failure should be listed"
        shown_error = page.text_content("#failures tr[data-item] td.error-text")
        assert shown_error and shown_error.strip() != "(no message)"

        # Forgetting the key empties the page.
        page.click("#signout")
        page.wait_for_selector("#login:not([hidden])")
        assert "store-a" not in page.content()
        assert page.evaluate("sessionStorage.getItem('fairway-admin-key')") is None

    assert not elsewhere, f"the page loaded something from elsewhere: {elsewhere}"
    assert not [p for p in problems if "401" not in p], problems  # the wrong key's 401 is logged by the browser

