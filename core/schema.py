"""The OpenAPI document's error answers: every operation says what its errors look like.

Every error the API returns has one shape (`core.exceptions`): `{"message", "extra"}`. A
drf-spectacular post-processing hook adds it as the `Error` component and documents, on each
operation, the error statuses it can answer — so a client (and the schemathesis run in CI) can
rely on the schema for every status, not only the happy one.
"""

from typing import Any

from drf_spectacular.authentication import SessionScheme

ERROR_COMPONENT = {
    "type": "object",
    "description": "Every error: a message naming what is wrong, and details.",
    "properties": {
        "message": {"type": "string"},
        "extra": {"type": "object", "additionalProperties": True},
    },
    "required": ["message", "extra"],
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

ERRORS = {
    "400": "Bad input; the message names the field or item that is wrong.",
    "401": "Not signed in: send `Authorization: Token <key>`.",
    "403": "Signed in, but this role may not do this.",
    "404": "No such object, or not one of yours; or no such page of a list.",
    "405": "The method is not allowed here.",
    "429": "Too many requests (or, for a token, too many failed sign-ins): wait as many "
           "seconds as `Retry-After` says.",
}
BODY_ERRORS = {"415": "The request body is in a media type this operation does not read."}
PUBLIC = {"/api/v1/auth/token/"}     # no 401/403: anyone may ask for a token


def _error_content(existing: dict[str, Any] | None) -> dict[str, Any]:
    """The Error shape, or — where the operation documents its own 400 body (an ingest report
    for a batch none of whose items was stored) — either of the two."""
    if not existing or "content" not in existing:
        return {"application/json": {"schema": ERROR_REF}}
    content = {}
    for media, body in existing["content"].items():
        schema = body.get("schema")
        content[media] = {"schema": {"oneOf": [schema, ERROR_REF]} if schema else ERROR_REF}
    return content


def document_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_COMPONENT
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            errors = dict(ERRORS)
            if "requestBody" in operation:
                errors |= BODY_ERRORS
            if path in PUBLIC:
                errors.pop("401")
                errors.pop("403")
            for code, description in errors.items():
                existing = responses.get(code)
                responses[code] = {"description": (existing or {}).get("description")
                                   or description, "content": _error_content(existing)}
    return result


class AuditedSessionScheme(SessionScheme):
    """The session scheme, under the subclass that also names the audit log's actor."""

    target_class = "core.access.AuditedSessionAuthentication"
