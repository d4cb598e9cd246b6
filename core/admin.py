"""Admin pieces every app's admin shares.

The admin writes through the same services as the API, never around them:

- `ServiceAdmin`: the object (and, for SOPs and stage models, its inline rows as one list) is
  saved by the app's service. The form is validated by that very service — run inside a
  savepoint that is rolled back — so its ApplicationError shows next to the field it names, and
  no rule exists a second time for the admin.
- `ReadOnlyAdmin`: facts and history (events, orders, messages, tag and stage rows…) are written by
  ingest and the engine only; the admin shows them.
"""

from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.http import HttpResponseRedirect

from core import access
from core.exceptions import ApplicationError
from core.models import AuditEntry


class CustomerScopedAdmin(admin.ModelAdmin):
    """Admin of rows that belong to a customer, scoped like the API: an operator with
    admin-site access sees only their own customers' rows. `owner_field` is the path to the
    owning user; counts are left out, as they cost a scan at a million rows."""

    owner_field = "customer__owner"
    show_full_result_count = False
    list_per_page = 50

    def get_queryset(self, request):
        return access.scope_customers(super().get_queryset(request), request.user,
                                      owner_field=self.owner_field)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never written here: the services that write these rows keep their invariants
    (aggregates, history, the outbox's rules)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class _DryRun(Exception):
    pass


def _as_validation_error(exc: ApplicationError, fields: Iterable[str]) -> ValidationError:
    """`condition: all[0].op: unknown operator` → an error on the form's `condition` field
    when it has one, else on the form as a whole."""
    name = exc.message.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    if name in fields:
        return ValidationError({name: exc.message})
    return ValidationError(exc.message)


class ServiceAdmin(admin.ModelAdmin):
    """Saves and deletes through the app's services (see the module's docstring).

    Subclasses implement `service_save(request, original, fields, rows)` — `original` is the
    object as stored (None when adding), `fields` the form's cleaned values, `rows` the cleaned
    rows of `service_inline` (None without one) — and may implement `service_delete`."""

    service_inline: type[admin.options.InlineModelAdmin] | None = None

    def service_save(self, request, original, fields: dict[str, Any],
                     rows: list[dict[str, Any]] | None) -> models.Model:
        raise NotImplementedError

    def service_delete(self, request, obj) -> None:
        obj.delete()

    # --- validation: the service itself, rolled back -------------------------------------

    def _original(self, instance):
        return type(instance).objects.get(pk=instance.pk) if instance.pk else None

    def _dry_run(self, request, instance, fields, rows, form_fields) -> None:
        try:
            with transaction.atomic():
                self.service_save(request, self._original(instance), dict(fields), rows)
                raise _DryRun
        except _DryRun:
            pass
        except ApplicationError as exc:
            raise _as_validation_error(exc, form_fields)

    @staticmethod
    def _rows(formset) -> list[dict[str, Any]]:
        rows = []
        for form in formset.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or (not form.has_changed() and not form.instance.pk):
                continue
            rows.append({name: value for name, value in data.items()
                         if name in form.fields and name not in ("DELETE", "id", formset.fk.name)})
        return rows

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        owner = self

        class ServiceForm(form):
            def clean(inner):
                cleaned = super().clean()
                if inner.errors:
                    return cleaned
                if owner.service_inline is None:
                    owner._dry_run(request, inner.instance, cleaned, None, inner.fields)
                else:       # the inline's formset runs it, with the rows
                    inner.instance._service_fields = (cleaned, inner.fields)
                return cleaned

        return ServiceForm

    def get_formsets_with_inlines(self, request, obj=None):
        for formset, inline in super().get_formsets_with_inlines(request, obj):
            if self.service_inline and isinstance(inline, self.service_inline):
                formset = self._checked_formset(formset, request)
            yield formset, inline

    def _checked_formset(self, formset, request):
        owner = self

        class ServiceFormSet(formset):
            def clean(inner):
                super().clean()
                parent = getattr(inner.instance, "_service_fields", None)
                if parent is None or any(inner.errors):
                    return
                fields, form_fields = parent
                owner._dry_run(request, inner.instance, fields, owner._rows(inner), form_fields)

        return ServiceFormSet

    # --- saving and deleting: the service, for real ---------------------------------------

    def save_model(self, request, obj, form, change):
        pass        # the service saves in save_related, with the inline rows

    def save_related(self, request, form, formsets, change):
        rows = None
        if self.service_inline is not None:
            rows = next((self._rows(formset) for formset in formsets
                         if formset.model is self.service_inline.model), [])
        saved = self.service_save(request, self._original(form.instance), form.cleaned_data,
                                  rows)
        form.instance.pk = saved.pk
        form.instance._state.adding = False
        for formset in formsets:       # what the change message reads (formset.save() sets it)
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def get_deleted_objects(self, objs, request):
        # What goes with the object (a tag's holders, an SOP's steps) is the service's to
        # decide and to record, not a matter of the admin's delete permissions on those rows.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def delete_model(self, request, obj):
        self.service_delete(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.service_delete(request, obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ApplicationError as exc:       # the service refused (e.g. an SOP with history)
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.path.rsplit("/delete/", 1)[0] + "/change/")

    def response_action(self, request, queryset):
        try:
            return super().response_action(request, queryset)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only: written by the services only."""

    list_display = ("at", "actor_name", "action", "summary", "customer_id")
    list_filter = ("action", "at")
    search_fields = ("actor_name", "summary", "target_id", "=customer_id")
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
