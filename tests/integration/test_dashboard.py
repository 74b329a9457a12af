"""
The dashboard in a real headless Chromium (Debian's C{chromium}, driven by
Playwright for Python; never a browser of Playwright's own download),
against a real C{twistd -n gridlike}, with a real worker speaking the
original protocol: sign-in, a worker joining, a job pending -> running with
progress -> done, a batch's progress bar, a failure with its logs, retry
(one job, and a group of failures in one request) and delete, sign-out, all
without reloading the page.

Screenshots go to C{tests/artifacts/} (ignored by git).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.daemon import Daemon
from tests.integration.test_workers import PlainWorker

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
KEY = "k-dashboard"
CONFIG = f"""
[auth]
api_keys = ["{KEY}"]
dashboard_user = "ops"
dashboard_password = "s3cret"

[scheduling]
max_attempts = 1
"""
# Flags for a closed network: no background fetches, no updates.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: .ci/run installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    context.close()
    assert problems == []


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def submit(server: Daemon, key: str) -> None:
    response = requests.post(
        server.url + "/api/jobs/submit",
        files={"payload": b"in"},
        data={"key": key},
        headers={"X-API-KEY": KEY},
        timeout=10,
    )
    assert response.status_code == 202, response.text


def fetch(page: Page, method: str, path: str, csrf: bool) -> Any:
    """A request from the page itself, with or without the CSRF header."""
    return page.evaluate(
        """async ([method, path, csrf]) => {
            const session = await (await fetch("api/session")).json();
            const headers = csrf ? {"X-CSRF-Token": session.csrf} : {};
            const r = await fetch(path, {method, headers});
            return [r.status, await r.text()];
        }""",
        [method, path, csrf],
    )


def test_dashboard(make_daemon: Callable[..., Daemon], page: Page) -> None:
    """
    Signed in with the dashboard's user and password (API keys set too, so
    the session cookie is what opens the API), the page follows a real
    worker and its jobs live, and its buttons act.
    """
    server = make_daemon(CONFIG)
    page.goto(server.url + "/")

    # Nothing but the sign-in form until signed in.
    form = page.locator("#sign-in")
    expect(form).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    expect(form.locator("input[name=api_key]")).to_be_hidden()
    page.fill("input[name=user]", "ops")
    page.fill("input[name=password]", "wrong")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-problem")).to_have_text("wrong user or password")
    shot(page, "dashboard-sign-in.png")
    page.fill("input[name=password]", "s3cret")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#who")).to_have_text("signed in as ops")

    # The cookie is HttpOnly and SameSite=Strict.
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("gridlike_session", True, "Strict")

    # A worker joins.
    worker = PlainWorker(server, "machine-1")
    worker.register()
    row = page.locator('#workers tr[data-worker="machine-1"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(0)).to_have_text("plain machine-1")

    # A job: pending, running with progress, done.
    submit(server, "job-1")
    job = page.locator('#jobs tr[data-key="job-1"]')
    expect(job.locator(".status")).to_have_text("pending")
    expect(page.locator('.card[data-status="pending"] b')).to_have_text("1")
    assert worker.ready() == b"in"
    expect(job.locator(".status")).to_have_text("running")
    worker.send(code=3, percent=40, info="rendering frames")
    expect(job.locator("progress")).to_have_attribute("value", "40")
    expect(job).to_contain_text("rendering frames")
    expect(row).to_contain_text("job-1")
    expect(row.locator(".state")).to_have_text("busy")
    shot(page, "dashboard-running.png")
    worker.result(b"out")
    expect(job.locator(".status")).to_have_text("done")
    expect(page.locator('.card[data-status="done"] b')).to_have_text("1")
    expect(job.locator("a", has_text="result")).to_have_attribute("href", "api/jobs/job-1/result")
    expect(row.locator("td").nth(6)).to_have_text("1")  # jobs done
    batch = page.locator('#batches tr[data-batch="null:1"]')
    expect(batch.locator("progress")).to_have_attribute("max", "1")
    expect(batch.locator("td.progress")).to_have_text("1 / 1")
    # Its links open with the session's cookie alone.
    assert fetch(page, "GET", "api/jobs/job-1/payload", csrf=False) == [200, "in"]
    assert fetch(page, "GET", "api/jobs/job-1/result", csrf=False) == [200, "out"]

    # A failure, with its logs, grouped by its info.
    submit(server, "job-2")
    assert worker.ready() == b"in"
    worker.fail("renderer crashed", "Traceback: frame 7\nsegfault")
    failed = page.locator('#jobs tr[data-key="job-2"]')
    expect(failed.locator(".status")).to_have_text("failed")
    expect(batch.locator("td.progress")).to_have_text("1 / 2")  # kept current from the events
    expect(batch).to_contain_text("1 failed")
    group = page.locator("#failures .group", has_text="renderer crashed")
    expect(group).to_contain_text("1 job")
    expect(group.locator("pre.logs")).to_have_text("Traceback: frame 7\nsegfault")
    shot(page, "dashboard.png")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "dashboard-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Changes from the page need its CSRF token; with it, they work.
    status, body = fetch(page, "POST", "api/jobs/job-2/retry", csrf=False)
    assert status == 403 and "X-CSRF-Token" in json.loads(body)["problem"]
    failed.locator("button.retry").click()
    expect(failed.locator(".status")).to_have_text("pending")
    expect(group).to_have_count(0)

    # Two failures with the same info: "Retry all" of their group is one request.
    assert worker.ready() == b"in"
    worker.fail("renderer crashed", "again")
    submit(server, "job-3")
    assert worker.ready() == b"in"
    worker.fail("renderer crashed", "and again")
    expect(group).to_contain_text("2 jobs")
    expect(group.locator("pre.logs")).to_have_text("and again")
    expect(batch.locator("progress")).to_have_attribute("max", "3")
    expect(batch).to_contain_text("2 failed")
    shot(page, "dashboard-failures.png")
    retries: list[str] = []
    page.on("request", lambda r: retries.append(r.url) if "/retry" in r.url else None)
    with page.expect_response(lambda r: "api/jobs/retry?" in r.url) as answer:
        group.locator("button.retry-group").click()
    assert answer.value.status == 202
    assert answer.value.json() == {"retried": ["job-2", "job-3"], "count": 2}
    assert retries == [server.url + "/api/jobs/retry?status=failed&info=renderer+crashed"]
    expect(failed.locator(".status")).to_have_text("pending")
    expect(page.locator('#jobs tr[data-key="job-3"] .status')).to_have_text("pending")
    expect(group).to_have_count(0)
    expect(batch.locator("td.progress")).to_have_text("1 / 3")
    expect(batch).not_to_contain_text("failed")

    # Delete.
    job.locator("button.delete").click()
    expect(job).to_have_count(0)
    expect(batch.locator("td.progress")).to_have_text("0 / 2")
    gone = requests.get(server.url + "/api/jobs/job-1", headers={"X-API-KEY": KEY}, timeout=10)
    assert gone.status_code == 404

    # The worker leaves: greyed out.
    worker.ws.close()
    expect(row).to_have_class("gone")

    # Signing out ends the session: the cookie no longer opens the API.
    page.click("#sign-out")
    expect(form).to_be_visible()
    status, _ = fetch(page, "GET", "api/stats", csrf=False)
    assert status == 401


def test_open_page(make_daemon: Callable[..., Daemon], page: Page) -> None:
    """With no auth configured, the page is open, under the path prefix too."""
    server = make_daemon('[server]\npath_prefix = "/grid"\n')
    page.goto(server.url + "/grid")  # redirected to /grid/
    expect(page).to_have_url(server.url + "/grid/")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_hidden()
    response = requests.post(
        server.url + "/grid/api/jobs/submit", files={"payload": b"x"}, data={"key": "open-1"}, timeout=10
    )
    assert response.status_code == 202
    expect(page.locator('#jobs tr[data-key="open-1"] .status')).to_have_text("pending")


def test_pause_button(make_daemon: Callable[..., Daemon], page: Page) -> None:
    """A type's Pause button pauses it (its state shows), and Resume resumes it."""
    server = make_daemon()
    requests.post(server.url + "/api/jobs/submit", files={"payload": b"x"}, timeout=10)
    page.goto(server.url + "/")
    row = page.locator('#types tr[data-type="null"]')
    expect(row.locator(".type-state")).to_have_text("active")
    row.locator("button.pause").click()
    expect(row.locator(".type-state")).to_have_text("paused")
    stats = requests.get(server.url + "/api/stats", timeout=10).json()
    assert stats["type_states"] == {"null": "paused"}
    row.locator("button.resume").click()
    expect(row.locator(".type-state")).to_have_text("active")
    assert requests.get(server.url + "/api/stats", timeout=10).json()["type_states"] == {}


def test_drain_button(make_daemon: Callable[..., Daemon], page: Page) -> None:
    """
    Signed in with API keys set (the session cookie opens the type routes),
    every configured type shows its state, jobs or none; Drain drains it,
    and a change made elsewhere shows live, from its type event.
    """
    server = make_daemon(CONFIG + "\n[types.render]\n[types.encode]\n")
    page.goto(server.url + "/")
    page.fill("input[name=user]", "ops")
    page.fill("input[name=password]", "s3cret")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#live")).to_have_text("live")
    render = page.locator('#types tr[data-type="render"]')
    encode = page.locator('#types tr[data-type="encode"]')
    expect(render.locator(".type-state")).to_have_text("active")
    expect(encode.locator(".type-state")).to_have_text("active")
    expect(render.locator("button.resume")).to_be_disabled()

    render.locator("button.drain").click()
    expect(render.locator(".type-state")).to_have_text("draining")
    expect(render.locator("button.drain")).to_be_disabled()
    expect(page.locator("#problem")).to_have_text("")
    headers = {"X-API-KEY": KEY}
    types = requests.get(server.url + "/api/types", headers=headers, timeout=10).json()
    assert (types["render"]["state"], types["encode"]["state"]) == ("draining", "active")
    refused = requests.post(
        server.url + "/api/jobs/submit/render", files={"payload": b"x"}, headers=headers, timeout=10
    )
    assert refused.status_code == 503

    # Paused from outside the page: it shows without a reload.
    answer = requests.post(server.url + "/api/pause/encode", headers=headers, timeout=10)
    assert answer.status_code == 202
    expect(encode.locator(".type-state")).to_have_text("paused")
    expect(encode).to_have_class("type-paused")
    shot(page, "dashboard-types.png")

    render.locator("button.resume").click()
    expect(render.locator(".type-state")).to_have_text("active")
    types = requests.get(server.url + "/api/types", headers=headers, timeout=10).json()
    assert (types["render"]["state"], types["encode"]["state"]) == ("active", "paused")


def test_api_key_sign_in(make_daemon: Callable[..., Daemon], page: Page) -> None:
    """With only API keys set, the form asks for an API key."""
    server = make_daemon(f'[auth]\napi_keys = ["{KEY}"]\n')
    page.goto(server.url + "/")
    expect(page.locator("input[name=api_key]")).to_be_visible()
    expect(page.locator("input[name=user]")).to_be_hidden()
    page.fill("input[name=api_key]", KEY)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#who")).to_have_text("signed in as api key")
