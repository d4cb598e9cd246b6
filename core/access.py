"""Who may see what: the three roles and the one place that scopes querysets by user.

Roles are Django groups (`admin`, `operator`, `analyst`) created by a migration; a superuser
counts as admin. Operators see and change only the customers they own, admins everything, and
analysts read aggregates only. Every endpoint scopes through `scope_customers` (or the scoping
helpers built on it), so someone else's customer is simply not in the queryset: a 404.
"""

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import SAFE_METHODS, BasePermission

ADMIN = "admin"
OPERATOR = "operator"
ANALYST = "analyst"
ROLES = (ADMIN, OPERATOR, ANALYST)


def user_role(user) -> str | None:
    """The user's strongest role, or None for a user without one."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    cached = getattr(user, "_crm_role", False)
    if cached is not False:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = next((r for r in ROLES if r in names), None)
    user._crm_role = role
    return role


NO_ROLE = _("Your account has no role (admin, operator or analyst); ask an admin for one.")
FIGURES_ONLY = _("Analysts see aggregate figures only, not individual customers.")


def require_role(user) -> str:
    """The dashboard pages' gate: the user's role, or a 403 page saying they have none."""
    role = user_role(user)
    if role is None:
        raise PermissionDenied(NO_ROLE)
    return role


def require_customer_access(user, message=None) -> None:
    """Pages of individual customers: admins and operators; analysts get a 403 page."""
    require_role(user)
    if not can_see_customers(user):
        raise PermissionDenied(message or FIGURES_ONLY)


def require_admin(user, message) -> None:
    """Pages that change shared configuration: admins only, `message` saying what."""
    require_role(user)
    if not is_admin(user):
        raise PermissionDenied(message)


def is_admin(user) -> bool:
    return user_role(user) == ADMIN


def can_see_customers(user) -> bool:
    return user_role(user) in (ADMIN, OPERATOR)


# Given to the admin group by a migration (crm 0018) and, on Settings › Users, to a particular
# user; a superuser holds every permission.
FULL_PHONE_PERMISSION = "crm.export_full_phone"


def can_export_full_phone(user) -> bool:
    """Whether the user's exports of customer rows carry phone numbers unmasked."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    return user.has_perm(FULL_PHONE_PERMISSION)


def scope_customers(queryset: QuerySet, user, *, owner_field: str = "owner") -> QuerySet:
    """Restrict a queryset of customers (or rows reached through `owner_field`) to the user.

    `owner_field` is the path from the queryset's model to the owning user, e.g. `"customer__owner"`
    for events, so the same rule scopes every model that hangs off a customer.
    """
    role = user_role(user)
    if role == ADMIN:
        return queryset
    if role == OPERATOR:
        return queryset.filter(**{owner_field: user})
    return queryset.none()


class HasRole(BasePermission):
    """Any of the three roles; the default for every endpoint."""

    message = NO_ROLE

    def has_permission(self, request, view) -> bool:
        return user_role(request.user) is not None


class CustomerDataPermission(BasePermission):
    """Admins and operators work with customer records; analysts see aggregates only."""

    message = FIGURES_ONLY

    def has_permission(self, request, view) -> bool:
        return can_see_customers(request.user)


class AdminWritePermission(BasePermission):
    """Every role reads; only admins write (shared configuration such as channels)."""

    message = _("Only admins may change this.")

    def has_permission(self, request, view) -> bool:
        role = user_role(request.user)
        if role is None:
            return False
        return request.method in SAFE_METHODS or role == ADMIN


class IngestThrottled:
    """A viewset mixin: its bulk writes of facts (events, orders, imports, receipts — the
    actions named in `ingest_actions`) count against the tighter `ingest` API rate as well as
    the user's; its reads do not."""

    ingest_actions: frozenset[str] = frozenset({"create"})

    @property
    def throttle_scope(self) -> str | None:
        return "ingest" if getattr(self, "action", None) in self.ingest_actions else None


class _NamesTheActor:
    """DRF authentication that also makes the user the actor of the audit log."""

    def authenticate(self, request):
        from core.audit import set_actor

        found = super().authenticate(request)
        if found is not None:
            set_actor(found[0])
        return found


class AuditedTokenAuthentication(_NamesTheActor, TokenAuthentication):
    pass


class AuditedSessionAuthentication(_NamesTheActor, SessionAuthentication):
    pass


class AdminOnlyPermission(BasePermission):
    """Admins only, whatever the method (the audit log)."""

    message = _("Only admins may read this.")

    def has_permission(self, request, view) -> bool:
        return user_role(request.user) == ADMIN
