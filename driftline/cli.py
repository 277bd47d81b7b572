"""The `driftline` command: run the services, manage keys, ingest files, run detection."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from driftline.config import Settings, get_settings

app = typer.Typer(
    help="driftline: drift and model-quality monitoring. Start with `driftline up`, then open the URL it prints.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys: create, list, revoke (works on the metadata store directly).")
app.add_typer(keys_app, name="keys")

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
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8000).")] = None,
) -> None:
    """Start the stack on this machine and print its URL and an admin key."""
    settings = _settings(host=host, port=port)
    if settings.bootstrap_key is None:
        from pydantic import SecretStr

        key = "dl_" + secrets.token_urlsafe(32)
        settings = settings.model_copy(update={"bootstrap_key": SecretStr(key)})
    else:
        key = settings.bootstrap_key.get_secret_value()
    typer.echo(f"driftline API:  http://{settings.host}:{settings.port}  (OpenAPI at /docs)")
    typer.echo(f"admin key:      {key}")
    typer.echo(f"data dir:       {settings.home}")
    from driftline.ingest.app import serve as run

    run(settings)


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


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="driftline")


if __name__ == "__main__":  # pragma: no cover
    main()
