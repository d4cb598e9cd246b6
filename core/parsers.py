"""Request parsers: every malformed body is a 400 (`ParseError`), never a server error.

Each parser also refuses text the database cannot store — a NUL character or a lone surrogate
(`"\\ud800"` in JSON) anywhere in a key or a value — naming where it is, so no view, serializer
or service ever sees it (core.middleware does the same for the path, query string and headers).
"""

from typing import Any

from django.utils.translation import gettext as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError


def unstorable_text(text: str) -> str | None:
    """Why PostgreSQL cannot store `text`, or None."""
    if "\x00" in text:
        return _("NUL characters are not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _("lone surrogates are not text")
    return None


def find_unstorable(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first key or value of a parsed body that cannot be stored: (path, why)."""
    stack = [(path, data)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            why = unstorable_text(item)
            if why:
                return where or _("body"), why
        elif isinstance(item, dict):
            for key, value in item.items():
                sub = f"{where}.{key}" if where else str(key)
                why = unstorable_text(str(key))
                if why:
                    return sub, why
                stack.append((sub, value))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(item))
    return None


def _check(data: Any) -> Any:
    found = find_unstorable(data)
    if found:
        raise ParseError(f"{found[0]}: {found[1]}")
    return data


def form_fields(data) -> dict[str, Any]:
    """A QueryDict as {name: value}, or {name: [values]} for a repeated name."""
    if not hasattr(data, "getlist"):
        return data
    return {key: values[0] if len(values) == 1 else values
            for key, values in ((key, data.getlist(key)) for key in data)}


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, except that a body nested deeper than Python's recursion limit
    (`[[[[…]]]]`) is a parse error; DRF's own lets the RecursionError through as a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return _check(super().parse(stream, media_type, parser_context))
        except RecursionError:
            raise ParseError(_("JSON parse error - the document is nested too deeply"))


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _check(form_fields(data))
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        result = super().parse(stream, media_type, parser_context)
        _check(form_fields(result.data))
        _check({key: [f.name for f in result.files.getlist(key)] for key in result.files})
        return result
