"""One domain error type and one API exception handler.

Every error the API returns is `{"message": "...", "extra": {...}}`; the message names the field
or item that is wrong, so a client can act on it without reading server logs.
"""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A business rule was broken by the input; the message is shown to the user."""

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


def _flatten(detail: Any, path: str = "") -> list[str]:
    """Turn DRF's nested error detail into `field: message` lines, deepest path first."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                sub = f"{path}[{key}]"          # a list field's errors come keyed by index
            else:
                key = "" if key == "non_field_errors" else str(key)
                sub = f"{path}.{key}" if path and key else (path or key)
            lines.extend(_flatten(value, sub))
        return lines
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [f"{path}: {item}" if path else str(item) for item in detail]
        lines = []
        for index, item in enumerate(detail):
            if item:
                lines.extend(_flatten(item, f"{path}[{index}]"))
        return lines
    return [f"{path}: {detail}" if path else str(detail)]


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response({"message": exc.message, "extra": exc.extra},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(_("Not found."))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        lines = _flatten(exc.detail)
        response.data = {"message": "; ".join(lines) or _("Invalid input."),
                         "extra": {"fields": exc.detail}}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {"message": _("Malformed request body: %(detail)s")
                         % {"detail": exc.detail}, "extra": {}}
    else:
        detail = getattr(exc, "detail", None)
        response.data = {"message": str(detail) if detail else str(exc), "extra": {}}
    return response
