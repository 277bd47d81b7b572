"""The `driftline` command: run the services, manage keys, ingest files, run detection."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from driftline.config import Settings, get_settings

app = typer.Typer(
    help="driftline: drift and model-quality monitoring. Start with `driftline up`, then open the URL it prints.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys: create, list, revoke (works on the metadata store directly).")
app.add_typer(keys_app, name="keys")
alerts_app = typer.Typer(help="Alert channels and notifications (through a running API).")
app.add_typer(alerts_app, name="alerts")
secrets_app = typer.Typer(help="The deployment secret (works on the metadata store directly).")
app.add_typer(secrets_app, name="secrets")

ApiUrl = Annotated[str, typer.Option("--api", envvar="DRIFTLINE_API_URL", help="Base URL of a running API.")]
ApiKey = Annotated[str, typer.Option("--key", envvar="DRIFTLINE_API_KEY", help="An API key for that API.")]


def _settings(**overrides: object) -> Settings:
    base = get_settings()
    return (
        base.model_copy(update={k: v for k, v in overrides.items() if v is not None}) if overrides else base
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
) -> None:
    """Run the API (and, on the embedded store, its scheduler) in this process."""
    from driftline.ingest.app import serve as run

    run(_settings(host=host, port=port))


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option("--demo", help="Load a demo model with drifting traffic, late labels and alerts.")
    ] = False,
    port: Annotated[int, typer.Option(help="API port (another free one if taken).")] = 8000,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port (another free one if taken).")] = 8501,
    dashboard: Annotated[bool, typer.Option(help="Start the dashboard too.")] = True,
) -> None:
    """Start the stack (API with its scheduler, and the dashboard) and print the URLs and an admin key.

    Runs until Ctrl-C. With --demo, data goes to <home>/demo, made fresh at each start.
    """
    from driftline import up as stack_mod

    settings = get_settings()
    began = time.monotonic()
    key = (
        settings.bootstrap_key.get_secret_value()
        if settings.bootstrap_key
        else "dl_" + secrets.token_urlsafe(32)
    )
    home = stack_mod.demo_home(settings.home) if demo else settings.home
    stack = stack_mod.Stack(
        home,
        stack_mod.free_port(port),
        stack_mod.free_port(dashboard_port),
        key,
        typer.echo,
    )
    typer.echo("starting driftline ...")
    try:
        stack.start(dashboard=dashboard)
        if demo:
            typer.echo("loading the demo: training a model, replaying four weeks of traffic, detecting ...")
            result = stack.demo()
            det = result.get("detection", {})
            typer.echo(
                f"demo loaded: {result['predictions']:,} predictions, {result['labels']:,} labels, "
                f"{det.get('windows', 0)} windows detected, {det.get('alerts', 0)} findings"
            )
        typer.echo("")
        if dashboard:
            typer.echo(f"dashboard:  {stack.dashboard_url}")
        typer.echo(f"API:        {stack.api_url}  (OpenAPI at {stack.api_url}/docs)")
        typer.echo(f"admin key:  {key}")
        typer.echo(f"data dir:   {home}")
        if demo and stack.receiver is not None:
            typer.echo(f"webhooks:   {stack.receiver.url} (logged to {home / 'webhook.log'})")
        typer.echo(f"ready in {time.monotonic() - began:.0f} s; Ctrl-C stops everything")
        code = stack.wait()
    except Exception as exc:
        typer.echo(f"driftline up failed: {exc}", err=True)
        code = 1
    finally:
        stack.stop()
    raise typer.Exit(code)


@app.command()
def migrate() -> None:
    """Bring the metadata database to the newest schema (also done at every start)."""
    from driftline.storage.meta import MetaStore

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = MetaStore.from_settings(settings)
    store.migrate()
    typer.echo(f"metadata store at {store.url.render_as_string(hide_password=True)} is up to date")


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project the key belongs to.")] = "default",
    role: Annotated[
        str, typer.Option(help="ingest (serving systems), read (dashboards) or admin.")
    ] = "ingest",
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
) -> None:
    """Create a key and print it (it is stored only as a hash: copy it now)."""
    from driftline.storage.meta import MetaStore

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = MetaStore.from_settings(settings)
    store.migrate()
    with store.repos() as repos:
        plaintext, info = repos.keys.create(project, role, name)
    typer.echo(plaintext)
    typer.echo(f"id {info.id}, project {info.project}, role {info.role.value}", err=True)


@keys_app.command("list")
def keys_list(project: Annotated[str | None, typer.Option(help="Only this project.")] = None) -> None:
    """List keys (prefixes only, never the keys)."""
    from driftline.storage.meta import MetaStore

    store = MetaStore.from_settings(get_settings())
    with store.repos(readonly=True) as repos:
        for k in repos.keys.list(project):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            typer.echo(f"{k.id}\t{k.project}\t{k.role.value}\t{k.prefix}…\t{k.name}\t{state}")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or its prefix.")]) -> None:
    """Revoke a key; it is refused from the next request on."""
    from driftline.storage.meta import MetaStore

    store = MetaStore.from_settings(get_settings())
    with store.repos() as repos:
        done = repos.keys.revoke(int(key) if key.isdigit() else key)
    if not done:
        typer.echo(f"no active key {key}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Seal stored channel and pipeline URLs and secrets again under DRIFTLINE_SECRET_KEY.

    Run it after changing DRIFTLINE_SECRET_KEY with the old value in
    DRIFTLINE_SECRET_KEY_PREVIOUS; once it reports nothing unreadable, the old value can go.
    """
    from driftline.alerts.crypto import SecretBox
    from driftline.alerts.rotation import rotate
    from driftline.config import previous_secret_keys, secret_key
    from driftline.storage.meta import MetaStore

    settings = get_settings()
    made = settings.home / "secret.key"
    if settings.secret_key is None and not made.exists():
        # a wrong home would get a new secret (and, on SQLite, a new empty database) to "rotate" to
        typer.echo(
            f"no secret to seal under: DRIFTLINE_SECRET_KEY is not set and {made} does not exist "
            "(is DRIFTLINE_HOME the deployment's home?)",
            err=True,
        )
        raise typer.Exit(2)
    store = MetaStore.from_settings(settings)
    store.migrate()
    box = SecretBox(secret_key(settings), previous_secret_keys(settings))
    with store.session() as session:
        report = rotate(session, box)
    typer.echo(
        f"sealed again: {report.resealed}, already current: {report.current}, "
        f"changed meanwhile (current already): {report.changed_meanwhile}"
    )
    for label in report.unreadable:
        typer.echo(
            f"unreadable with the configured secrets: {label} (set its URL and secret again)", err=True
        )
    if report.unreadable:
        raise typer.Exit(1)


_MEDIA = {
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv",
    ".arrow": "application/vnd.apache.arrow.stream",
}


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV, Parquet or Arrow file.")],
    model: Annotated[str, typer.Option(help="The registered model the rows belong to.")],
    api: ApiUrl = "http://127.0.0.1:8000",
    key: ApiKey = "",
    kind: Annotated[str, typer.Option(help="predictions, labels or feedback.")] = "predictions",
) -> None:
    """Send a file of flat rows (one per record, features as columns) to a running API."""
    import httpx

    media = _MEDIA.get(file.suffix.lower())
    if media is None:
        typer.echo(f"unknown file type {file.suffix!r}; use .csv, .parquet or .arrow", err=True)
        raise typer.Exit(2)
    if kind not in ("predictions", "labels", "feedback"):
        typer.echo("--kind must be predictions, labels or feedback", err=True)
        raise typer.Exit(2)
    response = httpx.post(
        f"{api.rstrip('/')}/v1/{kind}",
        params={"model": model},
        content=file.read_bytes(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": media},
        timeout=600,
    )
    if response.status_code >= 400:
        typer.echo(f"refused ({response.status_code}): {response.text}", err=True)
        raise typer.Exit(1)
    body = response.json()
    typer.echo(
        f"accepted {body['accepted']}, duplicates {body['duplicates']}, violations {body['violations']}"
    )


def _print_detect(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        import json

        typer.echo(json.dumps(body, indent=2))
        return
    versions = ", ".join(str(v) for v in body["versions"]) or "none"
    typer.echo(
        f"{body['model']}: {body['windows']} windows of {body['window']} from {body['start']} to {body['end']}"
    )
    typer.echo(
        f"versions with traffic: {versions}; buckets summarised {body['buckets_summarised']}, "
        f"rows written {body['rows_written']}, alerts {body['alerts']}, {body['seconds']}s"
    )
    for error in body["errors"]:
        typer.echo(f"detector failed: {error}", err=True)


@app.command()
def detect(
    model: Annotated[str, typer.Option(help="The registered model to run detection for.")],
    start: Annotated[str, typer.Option(help="Start of the range: ISO 8601 (naive = UTC) or epoch seconds.")],
    end: Annotated[str, typer.Option(help="End of the range (exclusive): ISO 8601 or epoch seconds.")],
    window: Annotated[
        str | None,
        typer.Option(help="Window length: whole hours such as 1h, 6h, 1d, 7d, 30d (default: the monitor's)."),
    ] = None,
    project: Annotated[
        str, typer.Option(help="Project of the model (in-process runs; over the API the key decides).")
    ] = "default",
    api: Annotated[
        str,
        typer.Option(
            "--api", envvar="DRIFTLINE_API_URL", help="Base URL of the running API (embedded store only)."
        ),
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str, typer.Option("--key", envvar="DRIFTLINE_API_KEY", help="An admin key of that API.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Backfill: run every detector of the model's monitor over a range now, replacing earlier results.

    With a ClickHouse server (DRIFTLINE_CLICKHOUSE_URL) this runs here, against the stores. On the embedded store only the API process may read the data, so this asks the running API to do it (POST /v1/models/{model}/detect) and waits for the answer.

    The range is widened to whole windows, aligned to multiples of their length since the epoch (whole hours, UTC days). Exit code 1 when a detector failed (its error result is stored), 2 when the request was refused.
    """
    settings = get_settings()
    if settings.clickhouse_url:
        body = _detect_here(settings, project, model, start, end, window)
    else:
        body = _detect_remote(api, key, model, start, end, window)
    _print_detect(body, as_json)
    if body["errors"]:
        raise typer.Exit(1)


def _detect_here(
    settings: Settings, project: str, model: str, start: str, end: str, window: str | None
) -> dict[str, Any]:
    from driftline.alerts import AlertService
    from driftline.detectors.monitors import iso, monitor_of
    from driftline.detectors.runner import Runner
    from driftline.detectors.scheduler import detect as run
    from driftline.detectors.scheduler import detect_range
    from driftline.errors import DriftlineError
    from driftline.storage.events import EventStore, make_engine
    from driftline.storage.meta import MetaStore

    meta = MetaStore.from_settings(settings)
    events = EventStore(make_engine(settings))
    try:
        meta.migrate()
        with meta.repos(readonly=True) as repos:
            record = repos.monitors.get(project, model)
        chosen = window or monitor_of(record).config.window
        rng = detect_range(start, end, chosen, max_windows=settings.detect_max_windows)
        runner = Runner(events)
        result, configs = run(meta, runner, project, model, rng)
        # notifications go to the outbox; a running API's sender delivers them
        AlertService(settings, meta, runner.metrics).after_run(project, model, result)
    except DriftlineError as exc:
        typer.echo(f"detect failed: {exc.message}", err=True)
        raise typer.Exit(2 if exc.status_code < 500 else 1) from None
    finally:
        events.engine.close()
        meta.dispose()
    return {
        "model": model,
        "start": iso(result.start),
        "end": iso(result.end),
        "window": chosen,
        "windows": result.windows,
        "versions": result.versions,
        "buckets_summarised": result.buckets_summarised,
        "rows_written": result.rows_written,
        "alerts": result.alerts,
        "errors": result.errors,
        "seconds": round(result.seconds, 3),
        "detectors": [{"kind": c.kind, "id": c.id} for c in configs],
    }


def _detect_remote(
    api: str, key: str, model: str, start: str, end: str, window: str | None
) -> dict[str, Any]:
    import httpx

    if not key:
        typer.echo("an admin key is needed: --key or DRIFTLINE_API_KEY", err=True)
        raise typer.Exit(2)
    payload: dict[str, object] = {"start": start, "end": end}
    if window:
        payload["window"] = window
    try:
        response = httpx.post(
            f"{api.rstrip('/')}/v1/models/{model}/detect",
            json=payload,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(10.0, read=None),  # a long backfill answers when it is done
        )
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the API at {api}: {exc}", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        typer.echo(f"refused ({response.status_code}): {detail}", err=True)
        raise typer.Exit(2 if response.status_code < 500 else 1)
    body: dict[str, Any] = response.json()
    return body


@app.command()
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Run one sweep over every model now, print it and exit.")
    ] = False,
) -> None:
    """Run the detection scheduler in the foreground (with a ClickHouse server).

    Every DRIFTLINE_SCHEDULER_TICK_SECONDS it detects, for each model that is due, every window closed since the last one done (bounded by the monitor's lookback); once a day it drops event partitions older than DRIFTLINE_RETENTION_DAYS.

    Start as many workers as you like: a lease in the metadata database lets one worker at a time run a model. Ctrl-C or SIGTERM stops it after the current chunk of windows.
    """
    import signal
    import threading

    from driftline.alerts import AlertService
    from driftline.detectors.runner import Runner
    from driftline.detectors.scheduler import DetectionJobs, DetectionScheduler
    from driftline.ingest.telemetry import configure_logging
    from driftline.storage.events import EventStore, make_engine
    from driftline.storage.meta import MetaStore

    settings = get_settings()
    if not settings.clickhouse_url:
        typer.echo(
            "the embedded event store belongs to the API process, which runs the scheduler itself; "
            "`driftline worker` needs a ClickHouse server (DRIFTLINE_CLICKHOUSE_URL)",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level, as_json=settings.log_json)
    settings.home.mkdir(parents=True, exist_ok=True)
    meta = MetaStore.from_settings(settings)
    events = EventStore(make_engine(settings))
    try:
        meta.migrate()
        events.sweep_scratch()
        runner = Runner(events)
        jobs = DetectionJobs(
            meta,
            events,
            runner,
            lease_seconds=settings.scheduler_lease_seconds,
            retention_days=settings.retention_days,
            # rules are evaluated here; the API processes' senders deliver what they write
            after_run=AlertService(settings, meta, runner.metrics).after_run,
        )
        if once:
            for run in jobs.sweep():
                line = f"{run.project}/{run.model}: {run.status}, {run.windows} windows"
                typer.echo(line + (f" ({'; '.join(run.errors)})" if run.errors else ""))
            return
        stop = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        scheduler = DetectionScheduler(jobs, tick_seconds=settings.scheduler_tick_seconds)
        try:
            scheduler.start()
            typer.echo(f"worker {jobs.owner} started; Ctrl-C to stop", err=True)
            while not stop.wait(1.0):
                pass
            typer.echo("stopping: waiting for the current chunk of windows", err=True)
        finally:
            scheduler.shutdown(wait=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
        typer.echo("worker stopped", err=True)
    finally:
        events.engine.close()
        meta.dispose()


@alerts_app.command("test-channel")
def alerts_test_channel(
    name: Annotated[str, typer.Argument(help="The channel's name (or id).")],
    api: ApiUrl = "http://127.0.0.1:8000",
    key: ApiKey = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the delivery outcome.")] = 30.0,
) -> None:
    """Send a test message to a channel through the running API's outbox and report how it went.

    Exit code 0 when the receiver accepted it, 1 when the delivery failed (the reason is printed; the message is dead-lettered and listed by GET /v1/outbox?state=dead), 2 when the request was refused.
    """
    import httpx

    if not key:
        typer.echo("an admin key is needed: --key or DRIFTLINE_API_KEY", err=True)
        raise typer.Exit(2)
    try:
        response = httpx.post(
            f"{api.rstrip('/')}/v1/channels/{name}/test",
            params={"wait": wait},
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(10.0, read=wait + 30.0),
        )
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the API at {api}: {exc}", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        typer.echo(f"refused ({response.status_code}): {detail}", err=True)
        raise typer.Exit(2)
    item = response.json()
    if item["state"] == "delivered":
        typer.echo(f"delivered to channel {name} (HTTP {item['last_status']}), notification {item['id']}")
        return
    if item["state"] == "dead":
        typer.echo(f"delivery to channel {name} failed: {item['last_error']}", err=True)
        raise typer.Exit(1)
    typer.echo(f"notification {item['id']} is still {item['state']} after {wait:.0f}s", err=True)
    raise typer.Exit(1)


@app.command()
def dashboard(
    api: ApiUrl = "http://127.0.0.1:8000",
    key: ApiKey = "",
    port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Run the Streamlit dashboard against a running API until Ctrl-C.

    The dashboard process gets the key through its environment. Give it here through DRIFTLINE_API_KEY rather than --key to keep it out of ps too. A read key shows everything; acknowledging, approving and rejecting need an admin key.
    """
    from driftline.dashboard import launch

    if not key:
        typer.echo("a key is needed: --key or DRIFTLINE_API_KEY", err=True)
        raise typer.Exit(2)
    typer.echo(f"driftline dashboard on http://{host}:{port} (API {api}); Ctrl-C stops it")
    raise typer.Exit(launch.run(api, key, port=port, host=host))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="driftline")


if __name__ == "__main__":  # pragma: no cover
    main()
