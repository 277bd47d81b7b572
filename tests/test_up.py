"""`driftline up --demo`, as `make demo` runs it: the stack comes up loaded, the dashboard
answers, alerts reach the local receiver, and Ctrl-C (SIGINT to the whole process group, as a
terminal sends it) stops every process it started.

The real command runs in its own process group, on free loopback ports and a temp home;
tests/e2e drives the dashboard's pages in a browser.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.live_server import free_port

READY_WITHIN = 600  # generous: CI machines are shared; the figure printed is what counts


def read_until_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    out = ""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops everything" not in out:
        assert proc.poll() is None, f"driftline up exited with {proc.returncode}:\n{out}"
        assert time.monotonic() < deadline, f"not ready within {timeout}s:\n{out}"
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            out += line
    return out


def test_demo_comes_up_loaded_alerts_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["DRIFTLINE_HOME"] = str(tmp_path)
    port, dashboard_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline",
            "up",
            "--demo",
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = read_until_ready(proc, READY_WITHIN)
        api = re.search(r"API:\s+(http://127\.0\.0\.1:\d+)", out)
        key = re.search(r"admin key:\s+(\S+)", out)
        ready = re.search(r"ready in (\d+) s", out)
        dashboard = re.search(r"dashboard:\s+(http://\S+)", out)
        assert api and key and ready and dashboard, out
        page = httpx.get(dashboard.group(1), timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        print(f"\ndriftline up --demo ready in {ready.group(1)} s")
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        with httpx.Client(base_url=api.group(1), headers=headers, timeout=60) as c:
            model = c.get("/v1/models/loan_default").json()
            assert model["counts"]["predictions"] > 50_000 and model["counts"]["labels"] > 20_000, model
            assert {v["version"] for v in model["versions"]} == {"v1", "v2"}
            rows = c.get(
                "/v1/models/loan_default/metrics",
                params={
                    "detector": "feature_drift",
                    "feature": "amount",
                    "version": "v1",
                    "slice": "",
                    "details": "false",
                },
            ).json()["items"]
            days = sorted({r["window_start"] for r in rows})
            flagged = sorted({r["window_start"] for r in rows if r["alert"]})
            assert len(days) >= 27, days  # four weeks of traffic: the closed days before today
            # the first day is a whole quiet day; drift begins part-way and stays
            assert days[0] not in flagged and flagged and flagged[-1] == days[-1], (days, flagged)
            assert flagged[0] > days[len(days) // 3], flagged
        hooks = tmp_path / "demo" / "webhook.log"
        deadline = time.monotonic() + 120
        while not (hooks.exists() and hooks.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert hooks.exists(), "no webhook reached the demo's receiver"
        first = json.loads(hooks.read_text().splitlines()[0])
        assert first["alert"]["model"] == "loan_default" and first["alert"]["state"] == "firing", first
        children = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], check=False, capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 4, children  # the CLI, the API, the dashboard launcher and streamlit
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        left = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], check=False, capture_output=True, text=True
        ).stdout.split()
        assert not left, f"processes left after Ctrl-C: {left}"
        with httpx.Client(timeout=2) as c:
            try:
                c.get(f"{api.group(1)}/healthz")
                raise AssertionError("the API still answers after Ctrl-C")
            except httpx.TransportError:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
