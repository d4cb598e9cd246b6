"""Text the database can store: PostgreSQL's text and jsonb refuse a NUL character, and a lone
surrogate (`"\\ud800"` in JSON) is not UTF-8. One rule for every way text comes in — request
bodies (core.parsers), paths, query strings and headers (core.middleware), CSV cells and
ingest items (crm.services)."""

from typing import Any

from django.utils.translation import gettext as _


def unstorable_text(text: str) -> str | None:
    """Why the database cannot store `text`, or None."""
    if "\x00" in text:
        return _("NUL characters are not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _("lone surrogates are not text")
    return None


def find_unstorable(data: Any, path: str = "") -> tuple[str, str] | None:
    """The first key or value of a JSON-like value that cannot be stored: (path, why)."""
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
