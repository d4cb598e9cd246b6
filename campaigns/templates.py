"""Message templates: Django template syntax over one customer's fields, tags, stages and owner.

A sandboxed engine: no loaders (so no `include`/`extends`), only the built-in tags and filters,
no autoescaping (messages are plain text). A template that does not compile or does not render
for a sample customer is refused when it is saved, with the reason.
"""

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.template import Context, Engine, TemplateSyntaxError
from django.utils import timezone
from django.utils.translation import gettext as _

from core.exceptions import ApplicationError

ENGINE = Engine(loaders=[], autoescape=False, string_if_invalid="", libraries={})
MAX_LENGTH = 4000


def compile_template(source: str, *, path: str = "template"):
    if not isinstance(source, str) or not source.strip():
        raise ApplicationError(_("%(path)s: write the message") % {"path": path})
    if len(source) > MAX_LENGTH:
        raise ApplicationError(_("%(path)s: at most %(n)d characters") % {"path": path,
                                                                           "n": MAX_LENGTH})
    try:
        return ENGINE.from_string(source)
    except TemplateSyntaxError as exc:
        raise ApplicationError(_("%(path)s: the template does not compile: %(error)s")
                               % {"path": path, "error": exc}) from exc


# What a template may read of a customer: the fields of the customer resource (DESIGN §4). A
# template gets these values, never the model instance, so it cannot walk relations to other
# customers (`customer.channel.customers.all`) or to staff accounts (`customer.owner.password`).
CUSTOMER_FIELDS = ("id", "external_id", "name", "phone", "gender", "city", "joined_at", "status",
                   "opted_out", "attributes", "orders_count", "total_spent", "first_order_at",
                   "last_order_at", "last_active_at")


def _customer_values(customer, owner: SimpleNamespace) -> SimpleNamespace:
    channel = getattr(customer, "channel", None)
    return SimpleNamespace(
        pk=getattr(customer, "id", None),
        **{name: getattr(customer, name, None) for name in CUSTOMER_FIELDS},
        channel=SimpleNamespace(code=channel.code, name=channel.name) if channel else None,
        owner=owner)


def context_for(customer, *, tags: list[str], stages: dict[str, str],
                categories: list[str]) -> dict[str, Any]:
    owner = customer.owner
    owner_values = SimpleNamespace(username=owner.get_username(),
                                   name=owner.get_full_name() or owner.get_username())
    return {
        "customer": _customer_values(customer, owner_values),
        "name": customer.name or _("customer"),
        "tags": tags,
        "stages": stages,
        "categories": categories,
        "owner": owner_values,
        "now": timezone.localtime(),
    }


def render(template, context: dict[str, Any]) -> str:
    return template.render(Context(context)).strip()


def sample_context() -> dict[str, Any]:
    """A believable customer for previews and save-time checks."""
    owner = SimpleNamespace(get_username=lambda: "op_wang", get_full_name=lambda: "王店长")
    customer = SimpleNamespace(
        id=1, external_id="wm_sample", name="林小姐", phone="13800000000", gender="female",
        city="杭州", channel=SimpleNamespace(code="store-qr", name="门店扫码"), owner=owner,
        joined_at=timezone.now(), status="active", opted_out=False,
        attributes={"level": "gold"}, orders_count=2, total_spent=Decimal("568.00"),
        first_order_at=timezone.now(), last_order_at=timezone.now(),
        last_active_at=timezone.now())
    return context_for(customer, tags=["新客户"], stages={"journey": "trust", "value": "growth",
                                                        "aipl": "purchase"},
                       categories=["护肤"])


def check_template(source: str, *, path: str = "template") -> str:
    """Compile and render for the sample customer; answers the rendered text."""
    template = compile_template(source, path=path)
    try:
        text = render(template, sample_context())
    except Exception as exc:   # a template error of any kind is the author's to fix
        raise ApplicationError(_("%(path)s: the template does not render: %(error)s")
                               % {"path": path, "error": exc}) from exc
    if not text:
        raise ApplicationError(_("%(path)s: the template renders to nothing") % {"path": path})
    return text
