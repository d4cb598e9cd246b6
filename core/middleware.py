"""Refuse, before any view runs, a request whose path, query string or headers hold text the
database cannot store (a NUL character, a lone surrogate): a 400 naming where, as JSON under
/api/. Bodies are checked by the parsers (core.parsers) and Django's form fields."""

from django.http import HttpResponseBadRequest, JsonResponse
from django.utils.translation import gettext as _

from core.parsers import form_fields
from core.text import find_unstorable, unstorable_text


def _problem(request) -> tuple[str, str] | None:
    why = unstorable_text(request.path)
    if why:
        return _("path"), why
    found = find_unstorable(form_fields(request.GET))
    if found:
        return found
    for name, value in request.META.items():
        if name.startswith("HTTP_") and isinstance(value, str):
            why = unstorable_text(value)
            if why:
                return name[5:].replace("_", "-").title(), why
    return None


class RefuseUnstorableInput:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        problem = _problem(request)
        if problem is None:
            return self.get_response(request)
        message = f"{problem[0]}: {problem[1]}"
        if request.path.startswith("/api/"):
            return JsonResponse({"message": message, "extra": {"parameter": problem[0]}},
                                status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
