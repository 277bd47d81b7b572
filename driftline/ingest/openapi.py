"""The OpenAPI document as the service really answers: every error is an `ErrorOut`.

FastAPI documents its own 422 shape and only the codes a route lists; driftline answers
every error (auth, validation, limits, stores down) with one JSON shape, from middleware
and handlers that no route declares. Clients and schema-driven fuzzers read this document,
so it lists what can come back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
# what any /v1 route may answer: bad input, no or wrong key, wrong project or role, not
# found, conflict, validation, a store that is down (503 carries Retry-After)
V1_ERRORS = {
    "400": "The request is malformed",
    "401": "Missing or unknown API key",
    "403": "The key's role may not do this",
    "404": "Not found in the key's project",
    "409": "Conflicts with what is registered",
    "422": "A parameter or field is invalid",
    "503": "A store is unavailable or the spool is full; retry after Retry-After seconds",
}
# what a route that reads a body may answer on top
BODY_ERRORS = {
    "408": "The body arrived too slowly",
    "413": "The body or batch is over the limit",
    "415": "The Content-Type is not one the route reads",
}
PLAIN_TEXT = {"/metrics": "text/plain"}  # Prometheus exposition format


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _retarget_validation_errors(node: Any) -> None:
    """Point every reference to FastAPI's HTTPValidationError at ErrorOut, in place."""
    if isinstance(node, dict):
        if node.get("$ref") == "#/components/schemas/HTTPValidationError":
            node["$ref"] = ERROR_REF["$ref"]
        for value in node.values():
            _retarget_validation_errors(value)
    elif isinstance(node, list):
        for value in node:
            _retarget_validation_errors(value)


def build(app: FastAPI, extra_models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in extra_models:
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc
    _retarget_validation_errors(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if path in PLAIN_TEXT:
                for response in responses.values():
                    if "content" in response:
                        response["content"] = {PLAIN_TEXT[path]: {"schema": {"type": "string"}}}
            if not path.startswith("/v1/"):
                responses.setdefault("503", _error("Not ready"))
                continue
            errors = dict(V1_ERRORS)
            if method in ("post", "put", "patch"):
                errors.update(BODY_ERRORS)
            for code, description in errors.items():
                if code in responses:
                    responses[code].setdefault("content", {}).setdefault(
                        "application/json", {"schema": ERROR_REF}
                    )
                else:
                    responses[code] = _error(description)
    return schema
