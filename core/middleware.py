"""Refuse, before any view runs, a request whose path, query string, headers or (outside the
API) posted form fields hold text the database cannot store (a NUL character, a lone
surrogate): a 400 naming where, as JSON under /api/. API bodies are checked by the parsers
(core.parsers); the dashboard's views read many posted fields without a Django form field,
so its form bodies are checked here."""

from django.http import HttpResponseBadRequest, HttpResponseNotAllowed, JsonResponse
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
    if request.method == "POST" and not request.path.startswith("/api/"):
        # Form-encoded or multipart: the fields only (an uploaded file is read by its view).
        found = find_unstorable(form_fields(request.POST))
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


# The pages and htmx fragments outside the API read (GET, HEAD), submit forms (POST) and answer
# OPTIONS; nothing there changes by PUT, PATCH or DELETE, which a function view would otherwise
# answer as if it were a GET.
PAGE_METHODS = ("GET", "HEAD", "POST", "OPTIONS")


class PageMethodsOnly:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method in PAGE_METHODS or request.path.startswith("/api/"):
            return self.get_response(request)
        return HttpResponseNotAllowed(PAGE_METHODS)
