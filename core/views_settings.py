"""Settings pages owned by core (admins only): the periodic jobs' schedules and the staff users
with their roles. The outreach policy page lives in campaigns (campaigns/views_settings.py),
which may import what it shows; config/urls_settings.py puts the three under /settings/."""

from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods
from django_celery_beat.models import PeriodicTask

from core import access, selectors, services
from core.exceptions import ApplicationError


def admin_required(view):
    """Signed in (else the login page) and an admin (else the 403 page), for GET and POST."""

    @wraps(view)
    def check(request, *args, **kwargs):
        if not access.is_admin(request.user):
            raise PermissionDenied(_("Only admins can open the settings."))
        return view(request, *args, **kwargs)

    return login_required(require_http_methods(["GET", "POST"])(check))


def _first_error(form: forms.Form) -> str:
    for name, errors in form.errors.items():
        label = form.fields[name].label if name in form.fields else ""
        return f"{label}: {errors[0]}" if label else errors[0]
    return _("Invalid input.")


# --- Schedules ---------------------------------------------------------------------------------

class ScheduleForm(forms.Form):
    """Parses one row's inputs; the rules (at least a second, valid crontab fields) are the
    service's."""

    enabled = forms.BooleanField(label=gettext_lazy("Enabled"), required=False)
    every = forms.IntegerField(label=gettext_lazy("Every (seconds)"), required=False)
    minute = forms.CharField(label=services.CRON_LABELS["minute"], required=False,
                             max_length=240)
    hour = forms.CharField(label=services.CRON_LABELS["hour"], required=False, max_length=96)
    day_of_month = forms.CharField(label=services.CRON_LABELS["day_of_month"], required=False,
                                   max_length=124)
    month_of_year = forms.CharField(label=services.CRON_LABELS["month_of_year"],
                                    required=False, max_length=64)
    day_of_week = forms.CharField(label=services.CRON_LABELS["day_of_week"], required=False,
                                  max_length=64)


def _row_values(row: selectors.JobRow) -> dict:
    values = {"enabled": row.task.enabled, "every": "", **dict.fromkeys(services.CRON_FIELDS, "")}
    if row.kind == "interval":
        values["every"] = row.schedule["interval"]
    elif row.kind == "crontab":
        values.update({field: row.schedule["crontab"][field] for field in services.CRON_FIELDS})
    return values


@admin_required
def schedules(request):
    """Every job beat runs: what it does, its schedule (edited in place), enabled, last run and
    runs so far; "reset to default" goes back to config/beat.py."""
    failed, error, status = None, "", 200
    if request.method == "POST":
        raw = request.POST.get("task", "")
        task = get_object_or_404(PeriodicTask, pk=int(raw) if raw.isdigit() else 0)
        try:
            if request.POST.get("action") == "reset":
                services.periodic_task_reset(task=task)
                messages.success(request, _("%(name)s: back to its default schedule.")
                                 % {"name": task.name})
            else:
                form = ScheduleForm(request.POST)
                if not form.is_valid():
                    raise ApplicationError(_first_error(form))
                data = form.cleaned_data
                services.periodic_task_update(
                    task=task, enabled=data["enabled"], every=data["every"],
                    crontab={field: data[field] for field in services.CRON_FIELDS})
                messages.success(request, _("%(name)s: saved.") % {"name": task.name})
        except ApplicationError as exc:
            failed, error, status = task.pk, exc.message, 400
        else:
            return redirect(f"{reverse('settings:schedules')}#job-{task.pk}")
    rows = selectors.periodic_task_rows()
    for row in rows:
        row.values = _row_values(row)
        if row.task.pk == failed:      # what the admin typed, with the message next to it
            row.values.update({name: request.POST.get(name, "") for name in row.values})
            row.values["enabled"] = bool(request.POST.get("enabled"))
            row.error = error
    return render(request, "settings/schedules.html",
                  {"rows": rows, "error": error, "current": "schedules"}, status=status)


# --- Users -------------------------------------------------------------------------------------

ROLE_CHOICES = [(access.ADMIN, gettext_lazy("Admin")),
                (access.OPERATOR, gettext_lazy("Operator")),
                (access.ANALYST, gettext_lazy("Analyst")),
                ("", gettext_lazy("No role"))]


class StaffCreateForm(UserCreationForm):
    """Django's own form: a free username, the password twice and the configured password
    validators; plus the name and the role."""

    role = forms.ChoiceField(label=gettext_lazy("Role"), choices=ROLE_CHOICES,
                             initial=access.OPERATOR, required=False)

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ["username", "last_name", "first_name"]
        labels = {"last_name": gettext_lazy("Family name"),
                  "first_name": gettext_lazy("Given name")}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A side form of a list page: the cursor stays where the admin is looking.
        self.fields["username"].widget.attrs.pop("autofocus", None)


class StaffUpdateForm(forms.Form):
    role = forms.ChoiceField(label=gettext_lazy("Role"), choices=ROLE_CHOICES, required=False)
    is_active = forms.BooleanField(label=gettext_lazy("Active"), required=False)
    full_phone = forms.BooleanField(label=gettext_lazy("May export full phone numbers"),
                                    required=False)


@admin_required
def users(request):
    """Staff users with their role, active flag and last sign-in; change role, active flag and
    whether they may export full phone numbers, create a user."""
    create_form = StaffCreateForm(prefix="new")
    failed, error, status = None, "", 200
    if request.method == "POST" and request.POST.get("action") == "create":
        create_form = StaffCreateForm(request.POST, prefix="new")
        if create_form.is_valid():
            data = create_form.cleaned_data
            try:
                user = services.staff_user_create(
                    username=data["username"], password=data["password1"], role=data["role"],
                    first_name=data["first_name"], last_name=data["last_name"])
            except ApplicationError as exc:
                create_form.add_error(None, exc.message)
            else:
                messages.success(request, _("%(username)s created.")
                                 % {"username": user.get_username()})
                return redirect(f"{reverse('settings:users')}#user-{user.pk}")
        status = 400
    elif request.method == "POST":
        raw = request.POST.get("user", "")
        user = get_object_or_404(get_user_model(), pk=int(raw) if raw.isdigit() else 0)
        form = StaffUpdateForm(request.POST)
        try:
            if not form.is_valid():
                raise ApplicationError(_first_error(form))
            services.staff_user_update(actor=request.user, user=user,
                                       role=form.cleaned_data["role"],
                                       is_active=form.cleaned_data["is_active"],
                                       full_phone=form.cleaned_data["full_phone"])
        except ApplicationError as exc:
            failed, error, status = user.pk, exc.message, 400
        else:
            messages.success(request, _("%(username)s saved.") % {"username": user.username})
            return redirect(f"{reverse('settings:users')}#user-{user.pk}")
    rows = selectors.staff_users()
    for row in rows:
        row.error = error if row.user.pk == failed else ""
    return render(request, "settings/users.html", {
        "rows": rows, "create_form": create_form, "role_choices": ROLE_CHOICES,
        "error": error, "current": "users"}, status=status)


AUDIT_PAGE_SIZE = 50


@admin_required
def audit_log(request):
    """Who did what and when, newest first, filtered by person, action and customer."""
    from django.core.paginator import Paginator

    from core.audit import ACTIONS
    from core.filters import AuditFilter
    from core.models import AuditEntry

    wanted = {"actor": request.GET.get("actor", "").strip(),
              "action": request.GET.get("action", ""),
              "customer": request.GET.get("customer", "").strip()}
    filtered = AuditFilter(wanted, queryset=AuditEntry.objects.all())
    entries = filtered.qs if filtered.is_valid() else AuditEntry.objects.none()
    page_obj = Paginator(entries, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    for entry in page_obj.object_list:
        entry.label = ACTIONS.get(entry.action, entry.action)
    actors = (AuditEntry.objects.exclude(actor_name="").order_by("actor_name")
              .values_list("actor_name", flat=True).distinct()[:200])
    return render(request, "settings/audit.html", {
        "page_obj": page_obj, "wanted": wanted, "actions": list(ACTIONS.items()),
        "actors": list(actors), "current": "audit"})
