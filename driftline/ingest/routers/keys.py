"""API keys of the caller's project (admin only); the CLI manages keys of any project."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response

from driftline.errors import NotFound
from driftline.ingest.api_models import KeyCreate, KeyCreated, KeyOut
from driftline.ingest.deps import MAX_ID, AdminKey, State
from driftline.storage.meta.records import KeyInfo

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def key_out(k: KeyInfo) -> KeyOut:
    return KeyOut(
        id=k.id,
        project=k.project,
        role=k.role.value,
        name=k.name,
        prefix=k.prefix,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
    )


@router.post("", status_code=201, response_model=KeyCreated, summary="Create a key (shown once)")
def create_key(body: KeyCreate, state: State, key: AdminKey) -> KeyCreated:
    with state.meta.repos() as repos:
        plaintext, info = repos.keys.create(key.project, body.role, body.name)
    return KeyCreated(key=plaintext, **key_out(info).model_dump())


@router.get("", response_model=list[KeyOut], summary="Keys of the project (never their secrets)")
def list_keys(state: State, key: AdminKey) -> list[KeyOut]:
    with state.meta.repos(readonly=True) as repos:
        return [key_out(k) for k in repos.keys.list(key.project)]


@router.delete("/{key_id}", status_code=204, summary="Revoke a key, effective at once")
def revoke_key(state: State, key: AdminKey, key_id: int = Path(ge=1, le=MAX_ID)) -> Response:
    with state.meta.repos() as repos:
        if not repos.keys.revoke(key_id, project=key.project):
            raise NotFound(f"no key {key_id} in this project")
    return Response(status_code=204)
