"""Page tests run the real dashboard script (Streamlit's AppTest) against a real API with the demo."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from driftline.dashboard import api as dashboard_api
from driftline.dashboard.launch import KEY_ENV, URL_ENV
from tests.dashboard.stack import DemoStack, demo_stack

APP = Path(dashboard_api.__file__).with_name("app.py")
OpenPage = Callable[..., AppTest]


@pytest.fixture(scope="session")
def demo() -> Iterator[DemoStack]:
    with demo_stack() as stack:
        yield stack


def open_page(page: str, params: dict[str, str] | None = None, *, timeout: float = 60) -> AppTest:
    """Run the entry script with these URL parameters, then the page, as a browser opening the URL would."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params.update(params or {})
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def page(demo: DemoStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenPage]:
    """Open a page against the demo API; caches start empty so each test reads the API."""
    monkeypatch.setenv(URL_ENV, demo.url)
    monkeypatch.setenv(KEY_ENV, demo.key)
    dashboard_api.clear_cache()
    yield open_page
    dashboard_api.clear_cache()


def figures(at: AppTest) -> list[dict[str, Any]]:
    """The Plotly figures a run drew, as the JSON the browser gets."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def titled(at: AppTest, text: str) -> dict[str, Any]:
    for fig in figures(at):
        title = ((fig.get("layout") or {}).get("title") or {}).get("text") or ""
        if text in title:
            return fig
    raise AssertionError(f"no chart titled {text!r}: {[titles for titles in chart_titles(at)]}")


def chart_titles(at: AppTest) -> list[str]:
    return [((f.get("layout") or {}).get("title") or {}).get("text") or "" for f in figures(at)]


def texts(at: AppTest) -> str:
    """Everything written as markdown, captions, titles and messages, for substring checks."""
    parts: list[str] = []
    for kind in ("title", "markdown", "caption", "info", "success", "warning", "error", "subheader"):
        parts.extend(str(getattr(e, "value", "")) for e in at.get(kind))
    return "\n".join(parts)
