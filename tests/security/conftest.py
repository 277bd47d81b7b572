"""Fixtures of the security tests: the real API on both stacks, with two populated projects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from driftline.config import Settings
from driftline.ingest.app import create_app
from tests.conftest import Api
from tests.security.world import Tenant, build_tenant

SECRET_KEY = "deployment-secret-for-tests-0123456789abcdef"


@dataclass
class World:
    api: Api
    settings: Settings
    a: Tenant
    b: Tenant


@pytest.fixture
def settings(stack: Settings) -> Settings:
    # delivery off: outbox items keep their state, so snapshots of a project stay comparable
    return stack.model_copy(update={"alerts_delivery_enabled": False, "secret_key": SecretStr(SECRET_KEY)})


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with Api(create_app(settings)) as api:
        a = build_tenant(api, "alpha", "a", hook_port=8)
        b = build_tenant(api, "bravo", "b", hook_port=9)
        yield World(api, settings, a, b)
