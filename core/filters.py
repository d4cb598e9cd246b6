"""List filters every app's API shares, and the audit log's."""

from django import forms
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField

from core import audit, moments
from core.models import AuditEntry


class MomentFormField(IsoDateTimeField):
    """An ISO 8601 date-time in UTC, within the years the product holds (core.moments): an
    offset PostgreSQL refuses (`+17:09`) or a year it cannot convert is a 400, not a 500."""

    def to_python(self, value):
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moments.in_utc(moment)
        except moments.MomentError as exc:
            raise forms.ValidationError(str(exc), code="invalid")


class MomentFilter(filters.IsoDateTimeFilter):
    field_class = MomentFormField


class AuditFilter(filters.FilterSet):
    """The audit log's filters, for `audit/` and Settings › Audit log alike."""

    actor = filters.CharFilter(field_name="actor_name",
                               help_text="Username of the person who acted.")
    action = filters.ChoiceFilter(choices=lambda: list(audit.ACTIONS.items()))
    customer = filters.NumberFilter(field_name="customer_id")

    class Meta:
        model = AuditEntry
        fields = ["actor", "action", "customer"]
