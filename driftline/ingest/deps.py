"""Dependencies declared once, as typed Annotated aliases the routers use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from driftline.errors import Forbidden, Unauthorized
from driftline.ingest.state import AppState
from driftline.storage.meta.models import KeyRole
from driftline.storage.meta.records import KeyInfo


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.driftline
    return state


State = Annotated[AppState, Depends(get_state)]


def bearer_token(request: Request) -> str:
    """The key a request presents; 401 when there is none."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    return token.strip()


def verified_key(state: AppState, token: str) -> KeyInfo:
    """The active key for a token (it asks the metadata store); 401 when unknown or revoked."""
    info = state.meta.verify_key(token)
    if info is None:
        raise Unauthorized("the API key is unknown or revoked")
    return info


def authenticate(request: Request, state: State) -> KeyInfo:
    """The caller's key: 401 when missing, unknown or revoked (checked per request).

    A sync dependency (FastAPI runs it in the threadpool): it asks the metadata store.
    """
    return verified_key(state, bearer_token(request))


def check_role(key: KeyInfo, roles: tuple[KeyRole, ...]) -> KeyInfo:
    """Admin keys may do everything; other roles only what is listed (403 otherwise)."""
    if key.role is not KeyRole.ADMIN and key.role not in roles:
        allowed = ", ".join(r.value for r in (*roles, KeyRole.ADMIN))
        raise Forbidden(f"a key with role {key.role.value!r} may not do this (needs {allowed})")
    return key


def require(*roles: KeyRole) -> Callable[[KeyInfo], Awaitable[KeyInfo]]:
    """A dependency that lets through the listed roles and admin keys."""

    # async: a check without I/O needs no trip through the threadpool
    async def check(key: Annotated[KeyInfo, Depends(authenticate)]) -> KeyInfo:
        return check_role(key, roles)

    return check


IngestKey = Annotated[KeyInfo, Depends(require(KeyRole.INGEST))]
ReadKey = Annotated[KeyInfo, Depends(require(KeyRole.READ))]
AdminKey = Annotated[KeyInfo, Depends(require())]


# ids are 64-bit signed integers in both metadata databases: a larger one is a 422, not a driver error
MAX_ID = 2**63 - 1
