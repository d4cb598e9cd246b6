from django.db import connection
from django.http import JsonResponse
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


def _api(request) -> bool:
    return request.path.startswith("/api/")


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
