from math import ceil

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views import defaults


def healthz(request):
    """Liveness and database reachability, for load balancers and compose healthchecks."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database failure means "not healthy", never a 500 page
        return JsonResponse({"status": "error", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok"})


def posted_next(request, default: str) -> str:
    """Where a form returns: its posted `next` when that is a path on this site, else
    `default` (never a route name: `redirect("0")` would look one up and fail)."""
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def _api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    """A request Django refuses before any view (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too
    many fields, a bad Host): the error shape under /api/, the page elsewhere."""
    if isinstance(exception, RequestDataTooBig):
        message = _("The request body is too large: at most %(n)d bytes.") % {
            "n": settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    elif isinstance(exception, TooManyFieldsSent):
        message = _("The request has too many fields: at most %(n)d.") % {
            "n": settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}
    else:
        message = _("Bad request.")
    if _api(request):
        return JsonResponse({"message": message, "extra": {}}, status=400)
    return defaults.bad_request(request, exception)


def not_found(request, exception=None):
    """A path no route matches: the error shape of the API under /api/, the page elsewhere."""
    if _api(request):
        return JsonResponse({"message": _("Not found."), "extra": {}}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _api(request):
        return JsonResponse({"message": _("Server error: the request was not carried out; "
                                          "the error is logged."), "extra": {}}, status=500)
    return defaults.server_error(request)


def locked_out(request, original_response=None, credentials=None):
    """django-axes' answer once a username has failed to sign in too often from one address:
    429 with Retry-After — the error shape under /api/, a page elsewhere."""
    minutes = ceil(settings.AXES_COOLOFF_TIME * 60)
    message = _("Too many failed sign-ins for this username: try again in %(n)d minutes.") % {
        "n": minutes}
    if _api(request):
        response = JsonResponse({"message": message, "extra": {"retry_after": minutes * 60}},
                                status=429)
    else:
        response = render(request, "registration/locked_out.html", {"message": message},
                          status=429)
    response["Retry-After"] = str(minutes * 60)
    return response
