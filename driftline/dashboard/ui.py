"""What every page shares: the pickers, the page registry, links, frames and small widgets.

All state a page depends on lives in the URL's query parameters (widgets bound with
`bind="query-params"`): model, version, range, start, end, and per page feature, window,
metric, stage. A link built by `link_params()` therefore opens the page and window that
explains an alert, and a copied URL shows a colleague the same view.
"""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from driftline.dashboard.api import Api, ApiError, Row, metrics_frame

T = TypeVar("T")

CONTEXT_KEY = "driftline.context"
FLASH_KEY = "driftline.flash"


@dataclass(frozen=True)
class PageDef:
    key: str
    title: str
    file: str
    icon: str


PAGES = (
    PageDef("overview", "Overview", "views/overview.py", ":material/monitor_heart:"),
    PageDef("drift", "Drift", "views/drift.py", ":material/ssid_chart:"),
    PageDef("performance", "Performance", "views/performance.py", ":material/speed:"),
    PageDef("operations", "Operations", "views/operations.py", ":material/dns:"),
    PageDef("alerts", "Alerts & triggers", "views/alerts.py", ":material/notifications_active:"),
)
PAGE_FILES = {p.key: p.file for p in PAGES}

# the option is what the URL holds (a bound selectbox keeps its option text in the URL)
RANGES: dict[str, timedelta | None] = {
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "custom": None,
}
DEFAULT_RANGE = "30d"

# which page explains a detector's results
PAGE_OF_DETECTOR = {
    "feature_drift": "drift",
    "prediction_drift": "drift",
    "dataset_drift": "drift",
    "data_quality": "drift",
    "performance": "performance",
    "estimated_performance": "performance",
    "blended_performance": "performance",
    "calibration": "performance",
    "slice_performance": "performance",
    "concept_drift": "performance",
    "label_drift": "performance",
    "version_comparison": "performance",
    "feedback": "performance",
    "operations": "operations",
}
HEALTH_COLOURS = {"ok": "green", "warning": "orange", "critical": "red", "unknown": "gray"}
SEVERITY_COLOURS = {"info": "blue", "warning": "orange", "critical": "red"}


@dataclass(frozen=True)
class Context:
    """The picked model, version and time range, shared by the sidebar and the page."""

    api: Api
    overview: Row
    model: Row
    version: str | None
    start: datetime
    end: datetime
    range_key: str
    every: str | None = None
    focus: Row | None = None

    @property
    def name(self) -> str:
        return str(self.model["name"])

    @property
    def task(self) -> str:
        return str(self.model.get("task") or "")

    @property
    def start_iso(self) -> str:
        return iso(self.start)

    @property
    def end_iso(self) -> str:
        return iso(self.end)

    @property
    def focus_window(self) -> pd.Timestamp | None:
        """Start of the window of the alert the page was linked from."""
        moment = parse_time((self.focus or {}).get("window_start"))
        return None if moment is None else pd.Timestamp(moment)

    def focus_value(self, field: str, *detectors: str) -> str | None:
        """A field of the linked alert, when it came from one of `detectors`."""
        if not self.focus or (detectors and self.focus.get("detector") not in detectors):
            return None
        value = self.focus.get(field)
        return str(value) if value not in (None, "") else None

    def version_row(self) -> Row | None:
        for v in self.model.get("versions") or []:
            if v.get("version") == self.version:
                return dict(v)
        return None

    def metrics(self, *, details: bool = False, **filters: object) -> pd.DataFrame:
        """The model's metric rows in the picked range (for the picked version unless given)."""
        filters.setdefault("version", self.version)
        filters.setdefault("start", self.start_iso)
        filters.setdefault("end", self.end_iso)
        filters.setdefault("window", self.every)
        return self.api.metrics(
            self.name, details=details, **{k: v for k, v in filters.items() if v is not None}
        )


# -- time -------------------------------------------------------------------------------------


def parse_time(value: object) -> datetime | None:
    """ISO 8601 (naive is UTC) or epoch seconds, as the API writes them; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(moment: datetime | pd.Timestamp) -> str:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return str(stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))


def window_key(moment: datetime | pd.Timestamp) -> str:
    """A window in the URL: its start to the minute, UTC (2026-11-29T13:00Z)."""
    return iso(moment)[:16] + "Z"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def time_range(
    range_key: str, anchor: datetime, custom: tuple[date, date] | None
) -> tuple[datetime, datetime]:
    """The [start, end) a preset means before the newest window, or whole custom days."""
    if range_key == "custom" and custom is not None:
        first, last = sorted(custom)
        return day_start(first), day_start(last) + timedelta(days=1)
    span = RANGES.get(range_key) or timedelta(days=30)
    return anchor - span, anchor


def anchor_of(model: Row) -> datetime:
    """Ranges end at the model's newest window, so a quiet model still shows its last data."""
    newest = parse_time(model.get("last_window_end"))
    if newest is not None:
        return newest
    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def window_label(start: pd.Timestamp | datetime, end: pd.Timestamp | datetime | None = None) -> str:
    s = pd.Timestamp(start)
    if end is None:
        return f"{s:%Y-%m-%d %H:%M}"
    e = pd.Timestamp(end)
    if e - s >= pd.Timedelta(days=1) and s.hour == 0 and e.hour == 0:
        last = e - pd.Timedelta(days=1)
        return f"{s:%Y-%m-%d}" if last == s else f"{s:%Y-%m-%d} – {last:%Y-%m-%d}"
    return f"{s:%Y-%m-%d %H:%M} – {e:%H:%M} UTC"


# -- formatting -------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "–"
    s = float(seconds)
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if s >= size:
            n = s / size
            return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"
    return f"{s:.0f} s"


def fmt_time(value: object) -> str:
    """An API timestamp to the minute, in UTC."""
    moment = parse_time(value)
    return "–" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def fmt_num(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    if pd.isna(number):
        return "–"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}g}"


def fmt_pct(value: object) -> str:
    if value is None:
        return "–"
    number = float(str(value))
    return "–" if pd.isna(number) else f"{number:.0%}"


# -- frames -----------------------------------------------------------------------------------


def frame(rows: Sequence[Row] | pd.DataFrame | None) -> pd.DataFrame:
    """Metric rows as a frame (see `api.metrics_frame`); a frame passes through."""
    if isinstance(rows, pd.DataFrame):
        return rows
    return metrics_frame(list(rows or []))


def got(value: pd.DataFrame | ApiError, what: str) -> pd.DataFrame:
    """A read's frame, or an empty one after saying why it failed where its chart would be."""
    if isinstance(value, ApiError):
        st.warning(f"{what}: {value.message}", icon=":material/error:")
        return metrics_frame([])
    if value.attrs.get("truncated"):
        st.caption(f"{what}: more results than one read returns; narrow the time range to see them all.")
    return value


def window_ends(df: pd.DataFrame) -> dict[pd.Timestamp, pd.Timestamp]:
    """Each window's end by its start."""
    if df.empty:
        return {}
    pairs = df[["window_start", "window_end"]].drop_duplicates("window_start")
    return dict(zip(pairs["window_start"], pairs["window_end"], strict=True))


def ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def detail(df: pd.DataFrame, *path: str) -> pd.Series:
    """A (nested) field of `details` as a column; NaN where absent."""

    def dig(d: Mapping[str, Any]) -> Any:
        value: Any = d
        for part in path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    return df["details"].map(dig)


# -- running requests side by side ------------------------------------------------------------


# one pool for the server process: reads of one page run side by side, threads are reused
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="driftline-read")


class Pending(Generic[T]):
    """Reads started together; `result()` waits for all of them."""

    def __init__(self, futures: dict[str, Future[T | ApiError]]) -> None:
        self.futures = futures

    def result(self) -> dict[str, T | ApiError]:
        return {name: f.result() for name, f in self.futures.items()}


def start_all(calls: Mapping[str, Callable[[], T]]) -> Pending[T]:
    """Start a page's independent API reads at once, so it can draw while they run."""
    ctx = get_script_run_ctx()

    def run(call: Callable[[], T]) -> T | ApiError:
        add_script_run_ctx(ctx=ctx)  # the caches need the session's context in the worker thread
        try:
            return call()
        except ApiError as exc:
            return exc

    return Pending({name: _POOL.submit(run, call) for name, call in calls.items()})


def fetch_all(calls: Mapping[str, Callable[[], T]]) -> dict[str, T | ApiError]:
    """Run independent reads at once: a page costs its slowest read, not their sum."""
    return start_all(calls).result()


def unwrap(value: T | ApiError, what: str) -> T | None:
    """A failed read shows its reason where its chart would be, and the rest of the page stays."""
    if isinstance(value, ApiError):
        st.warning(f"{what}: {value.message}", icon=":material/error:")
        return None
    return value


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """An API that refuses or is down becomes a message, not a traceback."""
    try:
        yield
    except ApiError as exc:
        if exc.status in (401, 403):
            st.error(f"The API refused the dashboard's key ({exc.message}).", icon=":material/key_off:")
        else:
            st.error(f"The API could not answer: {exc.message}", icon=":material/cloud_off:")
        st.stop()


# -- the sidebar ------------------------------------------------------------------------------


def _version_label(versions: Sequence[Row]) -> Callable[[str], str]:
    by_name = {str(v["version"]): v for v in versions}

    def label(version: str) -> str:
        v = by_name.get(version, {})
        parts = [p for p in (v.get("role"), v.get("approval")) if p]
        return f"{version} · {' · '.join(str(p) for p in parts)}" if parts else version

    return label


def _default_version(versions: Sequence[Row]) -> int:
    for i, v in enumerate(versions):
        if v.get("role") == "champion":
            return i
    return 0


def focused_alert(api: Api) -> Row | None:
    """The alert a link points at (`?alert=<id>`, as notifications link): it sets the defaults.

    It is a bound widget so that it stays in the URL across pages (the defaults it sets stay
    reproducible from a copied URL) and can be cleared.
    """
    if not (st.query_params.get("alert") or st.session_state.get("alert")):
        return None
    raw = st.text_input("Linked alert", key="alert", bind="query-params", help="Clear it to leave the alert")
    if not raw or not raw.strip().isdigit():
        return None
    try:
        got: Row = api.get(f"/v1/alerts/{int(raw)}")
    except ApiError as exc:
        st.warning(f"Alert {raw} could not be read: {exc.message}")
        return None
    return got


def _index(options: Sequence[str], wanted: object, fallback: int = 0) -> int:
    return options.index(str(wanted)) if wanted is not None and str(wanted) in options else fallback


def sidebar(api: Api, pages: Sequence[Any]) -> Context:
    """Navigation and the pickers; returns (and keeps for the page) the picked context.

    Defaults come from the alert a link names, if any; explicit URL parameters win over them.
    """
    with st.sidebar:
        st.markdown("## :material/query_stats: driftline")
        for page in pages:
            st.page_link(page)
        st.divider()
        overview = api.overview()
        models: list[Row] = list(overview.get("models") or [])
        if not models:
            st.info("No models yet: register one through the API (POST /v1/models).")
            st.stop()
        focus = focused_alert(api)
        names = [str(m["name"]) for m in models]
        name = st.selectbox(
            "Model", names, index=_index(names, (focus or {}).get("model")), key="model", bind="query-params"
        )
        model = models[names.index(name)] if name in names else models[0]
        if focus is not None and focus.get("model") != model["name"]:
            focus = None
        versions: list[Row] = list(model.get("versions") or [])
        version: str | None = None
        if versions:
            options = [str(v["version"]) for v in versions]
            version = st.selectbox(
                "Version",
                options,
                index=_index(options, (focus or {}).get("version"), _default_version(versions)),
                key="version",
                bind="query-params",
            )
            st.caption(_version_label(versions)(version or ""))
        around = alert_days(focus) if focus is not None else None
        range_key = st.selectbox(
            "Time range",
            list(RANGES),
            index=list(RANGES).index("custom" if around else DEFAULT_RANGE),
            key="range",
            bind="query-params",
        )
        anchor = anchor_of(model)
        custom: tuple[date, date] | None = None
        if range_key == "custom":
            last_day = (anchor - timedelta(seconds=1)).date()
            first_default, last_default = around or (last_day - timedelta(days=6), last_day)
            first = st.date_input("From", value=first_default, key="start", bind="query-params")
            last = st.date_input("To", value=last_default, key="end", bind="query-params")
            if isinstance(first, date) and isinstance(last, date):
                custom = (first, last)
        start, end = time_range(range_key or DEFAULT_RANGE, anchor, custom)
        # the header's read goes along with the one that picks the window length
        reads: dict[str, Any] = fetch_all(
            {
                "lengths": lambda: window_lengths(api, str(model["name"]), version, start, end),
                "recent": lambda: recent_drift(api, str(model["name"]), version, end),
            }
        )
        found = reads["lengths"]
        lengths = [] if isinstance(found, ApiError) else found
        every = lengths[0] if lengths else None
        if len(lengths) > 1:
            focus_length = length_of(focus) if focus else None
            wanted = duration_text(focus_length) if focus_length else None
            every = st.selectbox(
                "Window length", lengths, index=_index(lengths, wanted), key="every", bind="query-params"
            )
        st.caption(f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC")
    ctx = Context(
        api=api,
        overview=overview,
        model=model,
        version=version,
        start=start,
        end=end,
        range_key=range_key or DEFAULT_RANGE,
        every=every,
        focus=focus,
    )
    st.session_state[CONTEXT_KEY] = ctx
    return ctx


def alert_days(alert: Mapping[str, Any]) -> tuple[date, date] | None:
    """Whole days around an alert's window: a week of history before it, up to its end."""
    lo = parse_time(alert.get("window_start"))
    hi = parse_time(alert.get("window_end"))
    if lo is None or hi is None:
        return None
    span = max(hi - lo, timedelta(hours=1))
    return (lo - max(7 * span, timedelta(days=1))).date(), (hi - timedelta(seconds=1)).date()


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
    return int(text[:-1]) * units[text[-1]]


def duration_text(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def length_of(row: Row) -> int | None:
    lo, hi = parse_time(row.get("window_start")), parse_time(row.get("window_end"))
    return None if lo is None or hi is None else int((hi - lo).total_seconds())


def most_common_length(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the window length most represented (a series never mixes lengths)."""
    if df.empty:
        return df
    seconds = (df["window_end"] - df["window_start"]).dt.total_seconds()
    return df[seconds == seconds.value_counts().idxmax()]


def window_lengths(api: Api, model: str, version: str | None, start: datetime, end: datetime) -> list[str]:
    """Window lengths detected in the range, most windows first: a model detected both hourly and
    daily shows one of them at a time, never both mixed in one chart."""
    df = api.metrics(
        model, detector="dataset_drift", slice="", version=version, start=iso(start), end=iso(end)
    )
    if df.empty:
        return []
    seconds = (df["window_end"] - df["window_start"]).dt.total_seconds().astype(int)
    counts = seconds.value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [duration_text(int(length)) for length, _ in ordered]


def context() -> Context:
    """The context the entry script picked for this run."""
    ctx = st.session_state.get(CONTEXT_KEY)
    if not isinstance(ctx, Context):
        st.error("Open the dashboard through its entry page (driftline dashboard).")
        st.stop()
    return ctx


# -- page header and links --------------------------------------------------------------------


def badge(label: str, colour: str) -> None:
    st.badge(label, color=colour)  # type: ignore[arg-type]


def health_badge(health: str | None) -> None:
    h = health or "unknown"
    badge(h, HEALTH_COLOURS.get(h, "gray"))


def recent_drift(api: Api, model: str, version: str | None, end: datetime) -> pd.DataFrame:
    """The newest two days of dataset drift, with details (which features drifted)."""
    return api.metrics(
        model,
        details=True,
        detector="dataset_drift",
        slice="",
        version=version,
        start=iso(end - timedelta(days=2)),
        end=iso(end),
    )


def drifted_now(ctx: Context) -> list[str]:
    """Features the newest dataset-drift window flagged (one small read, shared by every page)."""
    df = ok(recent_drift(ctx.api, ctx.name, ctx.version, ctx.end))
    if ctx.every and not df.empty:
        seconds = (df["window_end"] - df["window_start"]).dt.total_seconds()
        df = df[seconds == duration_seconds(ctx.every)]
    if df.empty:
        return []
    details = df.sort_values("window_start")["details"].iloc[-1]
    details = details if isinstance(details, dict) else {}
    drifted = details.get("drifted_adjusted") or details.get("drifted") or []
    return [str(f) for f in drifted]


def header(ctx: Context, title: str) -> None:
    """Title with the model, its health and what drifts now: the context every page starts from."""
    st.title(f"{title} · {ctx.name}")
    cols = st.columns([3, 2])
    with cols[0]:
        version = ctx.version_row()
        bits = [f"**{ctx.name}**"]
        if version:
            bits.append(f"version **{version['version']}** ({version.get('role') or 'no role'})")
        if ctx.model.get("owner"):
            bits.append(f"owner {ctx.model['owner']}")
        bits.append(f"{ctx.start:%Y-%m-%d %H:%M} → {ctx.end:%Y-%m-%d %H:%M} UTC")
        st.markdown(" · ".join(bits))
    with cols[1]:
        try:
            drifted = drifted_now(ctx)
        except ApiError:
            drifted = []
        health = ctx.model.get("health")
        text = ", ".join(drifted) if drifted else "none"
        st.markdown(
            f":{HEALTH_COLOURS.get(health or 'unknown', 'gray')}-badge[health: {health or 'unknown'}] "
            f"&nbsp; drifted now: **{text}**"
        )
    focus = ctx.focus
    if focus:
        where = " · ".join(str(focus[k]) for k in ("metric", "feature", "slice") if focus.get(k))
        st.info(
            f"Linked from alert #{focus.get('id')} ({focus.get('state')}): **{focus.get('rule')}** · {where} · "
            f"value {fmt_num(focus.get('value'))} against {fmt_num(focus.get('threshold'))} in "
            f"{window_label(pd.Timestamp(focus['window_start']), pd.Timestamp(focus['window_end'])) if focus.get('window_start') and focus.get('window_end') else 'its newest window'}",
            icon=":material/link:",
        )


def link_params(alert: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The page and query parameters that explain an alert: its window with a week before it."""
    page = PAGE_OF_DETECTOR.get(str(alert.get("detector") or ""), "alerts")
    params: dict[str, str] = {"model": str(alert["model"])}
    if alert.get("version"):
        params["version"] = str(alert["version"])
    if alert.get("id") is not None:
        params["alert"] = str(alert["id"])
    around = alert_days(alert)
    lo = parse_time(alert.get("window_start"))
    if around is not None and lo is not None:
        params.update(
            {
                "range": "custom",
                "start": around[0].isoformat(),
                "end": around[1].isoformat(),
                "window": window_key(lo),
            }
        )
    feature = str(alert.get("feature") or "")
    if page == "drift" and feature and not feature.startswith("@"):
        params["feature"] = feature
    if page == "performance" and alert.get("detector") in (
        "performance",
        "estimated_performance",
        "blended_performance",
    ):
        params["metric"] = str(alert.get("metric"))
    if page == "operations" and feature and str(alert.get("metric", "")).startswith("latency"):
        params["stage"] = feature
    return page, params


def url(page: str, params: Mapping[str, str]) -> str:
    """A link to a page that opens with exactly these parameters (relative, so a base path holds)."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"./{page}" + (f"?{query}" if query else "")


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """In-app navigation that keeps the URL-bound pickers as they are."""
    st.page_link(PAGE_FILES.get(page, page), label=label, icon=icon)


def nav_link(label: str, href: str, *, key: str | None = None) -> None:
    """A link that opens `href` in this tab: a fresh load, so the page takes exactly its parameters."""
    attrs = f'data-key="{html.escape(key, quote=True)}" ' if key else ""
    st.html(
        f'<a {attrs}href="{html.escape(href, quote=True)}" style="display:inline-block;padding:0.3rem 0.8rem;'
        "border:1px solid rgba(49,51,63,0.25);border-radius:0.5rem;text-decoration:none;color:inherit;"
        f'font-size:0.9rem">{html.escape(label)} →</a>'
    )


def flash(message: str) -> None:
    """A message that survives the rerun a write causes."""
    st.session_state[FLASH_KEY] = message


def show_flash() -> None:
    message = st.session_state.pop(FLASH_KEY, None)
    if message:
        st.success(message, icon=":material/check_circle:")


def evidence(details: Mapping[str, Any]) -> None:
    st.code(json.dumps(details, indent=2, default=str)[:20_000], language="json")


def pick_window(
    label: str,
    windows: Sequence[pd.Timestamp],
    *,
    key: str = "window",
    default: pd.Timestamp | None = None,
    ends: Mapping[pd.Timestamp, pd.Timestamp] | None = None,
) -> pd.Timestamp | None:
    """A window of the range by its start (as ISO in the URL); the newest unless told."""
    if not windows:
        return None
    ordered = sorted(set(windows), reverse=True)
    options = [window_key(w) for w in ordered]
    chosen = default if default is not None else ordered[0]
    index = options.index(window_key(chosen)) if window_key(chosen) in options else 0
    picked = st.selectbox(label, options, index=index, key=key, bind="query-params")
    if ends and picked:
        start = pd.Timestamp(parse_time(picked))
        st.caption(window_label(start, ends.get(start)))
    return pd.Timestamp(parse_time(picked)) if picked else ordered[0]
