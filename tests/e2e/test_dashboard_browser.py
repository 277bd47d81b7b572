"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `driftline dashboard`
started as a user would start it, on an API loaded with the demo.

Each page must load with data (the model, a drifted feature, a drawn chart); approving a
retraining trigger must work through the page; a screenshot of each page goes to artifacts/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api

from tests.dashboard.stack import DemoStack, demo_stack, wait_for
from tests.support.live_server import free_port

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PAGES = [
    ("overview", "", "Overview"),
    ("drift", "drift", "Drift · loan_default"),
    ("performance", "performance", "Performance · loan_default"),
    ("operations", "operations", "Operations · loan_default"),
    ("alerts", "alerts", "Alerts & triggers · loan_default"),
]


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoStack]:
    # `make test` installs it (scripts/install_chromium.sh): a missing browser is a failure, not a skip
    assert CHROMIUM.exists(), f"{CHROMIUM} not installed: run scripts/install_chromium.sh"
    with demo_stack() as stack:
        yield stack


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def dashboard(demo: DemoStack) -> Iterator[str]:
    """`driftline dashboard` in its own process; the key goes in through the environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["DRIFTLINE_API_KEY"] = demo.key
    log = ARTIFACTS / "dashboard-e2e.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline", "dashboard", "--api", demo.url, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    children: list[int] = []
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what="the dashboard to answer /_stcore/health")
        children = _children(proc.pid)
        assert children, "the dashboard runs streamlit in a child process"
        for pid in [proc.pid, *children]:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert demo.key.encode() not in argv  # no key on any command line (ps shows them)
        environ = Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0")
        assert f"DRIFTLINE_API_KEY={demo.key}".encode() in environ
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), (
                f"streamlit child {pid} outlived the command"
            )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def browser(dashboard: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def settle(page: Any, title: str, timeout_ms: int = 60_000) -> None:
    """Until the script finished and every chart is drawn (each has Plotly's svg, no placeholder left)."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_ms)
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=timeout_ms)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stSkeleton]').length === 0",
        timeout=timeout_ms,
    )
    page.wait_for_function(
        """() => {
            const charts = document.querySelectorAll('[data-testid=stPlotlyChart]').length;
            const drawn = document.querySelectorAll('[data-testid=stPlotlyChart] .js-plotly-plot .main-svg').length;
            return charts > 0 && drawn >= charts;
        }""",
        timeout=timeout_ms,
    )


def screenshot(page: Any, name: str) -> Path:
    """The whole page: the viewport grows to the content's height (Streamlit scrolls inside)."""
    height = page.evaluate(
        "() => document.querySelector('[data-testid=stMainBlockContainer]').scrollHeight + 120"
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height), 14_000)})
    page.wait_for_timeout(800)  # charts resize to the new viewport
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


def test_each_page_loads_with_data_and_approving_a_trigger_works(
    browser: Any, dashboard: str, demo: DemoStack
) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(str(exc)))
    timings: dict[str, float] = {}
    try:
        for name, path, title in PAGES:
            began = time.perf_counter()
            page.goto(f"{dashboard}/{path}")
            settle(page, title)
            timings[name] = time.perf_counter() - began
            main = page.locator("[data-testid=stMain]")
            text = main.inner_text()
            assert "loan_default" in text, name
            assert "amount" in text, name  # the demo's drifted feature, named on every page
            assert page.locator("[data-testid=stException]").count() == 0, name
            assert page.locator("[data-testid=stPlotlyChart] .main-svg").count() >= 1, name
            screenshot(page, name)

        # approve the proposed retraining trigger through the alerts page
        (trigger,) = demo.get("/v1/triggers", state="proposed")
        card = (
            page.locator("[data-testid=stVerticalBlock]")
            .filter(has_text=f"Retraining trigger #{trigger['id']}")
            .filter(has=page.get_by_role("button", name="Approve"))
            .last
        )
        card.get_by_label("Note (recorded with the decision)").fill("retrain on the drifted population")
        card.get_by_label("Note (recorded with the decision)").press("Enter")
        page.wait_for_selector("[data-testid=stStatusWidget]", state="detached")
        card.get_by_role("button", name="Approve").click()
        page.get_by_text(f"Trigger {trigger['id']} approved by").wait_for(timeout=30_000)
        done = demo.get(f"/v1/triggers/{trigger['id']}")
        assert done["state"] in ("approved", "dispatched") and done["decided_by"]
        approval = next(h for h in done["history"] if h["state"] == "approved")
        assert approval["by"]["role"] == "admin" and approval["note"] == "retrain on the drifted population"
        settle(page, "Alerts & triggers · loan_default")
        screenshot(page, "alerts-approved")

        # an alert's Explain link opens the drift page on its window
        alert = next(
            a
            for a in demo.get("/v1/alerts", model="loan_default", state="firing")
            if a["detector"] == "feature_drift" and not a["slice"]
        )
        page.locator(f'a[data-key="explain-{alert["id"]}"]').click()
        settle(page, "Drift · loan_default")
        assert f"alert={alert['id']}" in page.url
        assert f"Linked from alert #{alert['id']}" in page.locator("[data-testid=stMain]").inner_text()
        screenshot(page, "drift-from-alert")
    finally:
        context.close()
    assert not failures, failures
    report = "browser, full page load until every chart is drawn: " + ", ".join(
        f"{k} {v:.2f}s" for k, v in timings.items()
    )
    (ARTIFACTS / "dashboard-browser-timings.txt").write_text(report + "\n")
    print("\n" + report)
