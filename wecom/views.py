"""The WeCom callback endpoint: verify, store, answer at once; a task does the rest."""

from django.http import Http404, HttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from wecom import services


def _text(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_http_methods(["GET", "POST"])
def callback(request):
    if not services.callbacks_enabled():
        raise Http404
    params = {name: request.GET.get(name, "") for name in ("msg_signature", "timestamp", "nonce")}
    if not all(params.values()):
        return _text(_("msg_signature, timestamp and nonce are required."), 400)
    signature, timestamp, nonce = (params["msg_signature"], params["timestamp"],
                                   params["nonce"])
    try:
        if request.method == "GET":
            # base64 has no spaces: a space is a "+" that reached us unencoded
            echostr = request.GET.get("echostr", "").replace(" ", "+")
            if not echostr:
                return _text(_("echostr is required."), 400)
            return _text(services.callback_verify_url(
                signature=signature, timestamp=timestamp, nonce=nonce, echostr=echostr))
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > services.MAX_BODY_BYTES:
            return _text(_("The body is too large."), 413)
        services.callback_receive(signature=signature, timestamp=timestamp, nonce=nonce,
                                  body=request.body)
    except services.CallbackRefused as exc:
        return _text(str(exc), 403)
    except services.CallbackMalformed as exc:
        return _text(str(exc), 400)
    return _text("success")
