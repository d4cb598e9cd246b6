"""Dashboard pages of tagging: the tags panel of the customer page, the tag groups and tags page
(create, edit, merge, delete) and the tag rules (edit, run now, their runs). Thin over the same
services and selectors as the REST API, with its permissions: every role reads, admins write."""

import copy
import json
from collections import Counter
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from core import access
from core.exceptions import ApplicationError
from core.views import posted_next
from crm import selectors as crm_selectors
from tagging import selectors, services
from tagging.models import Tag, TagGroup, TagRule, TagRuleRun

RULE_RUNS_SHOWN = 20


def customer_tags_panel(request, customer) -> str:
    """The customer's tags, each removable, and a picker to add one."""
    held = selectors.customer_tags(customer_id=customer.pk)
    held_ids = {t["id"] for t in held}
    tags_by_group: dict[int, list[Tag]] = {}
    for tag in Tag.objects.order_by("order", "name"):
        if tag.pk not in held_ids:
            tags_by_group.setdefault(tag.group_id, []).append(tag)
    choices = [(group, tags_by_group[group.pk]) for group in TagGroup.objects.all()
               if group.pk in tags_by_group]
    return render_to_string("tagging/_customer_tags.html",
                            {"customer": customer, "tags": held, "choices": choices},
                            request=request)


@login_required
@require_POST
def customer_tags_edit(request, pk: int):
    if not access.can_see_customers(request.user):
        raise PermissionDenied
    customer = crm_selectors.customer_get(user=request.user, pk=pk)
    add = [int(v) for v in request.POST.getlist("add") if v.isdigit()]
    remove = [int(v) for v in request.POST.getlist("remove") if v.isdigit()]
    try:
        change = services.customers_tags_change(
            customers=crm_selectors.customer_list(user=request.user).filter(pk=customer.pk),
            add=services.tags_resolve(add, path="add"),
            remove=services.tags_resolve(remove, path="remove"), actor=request.user,
            customer=customer)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if change.added:
            messages.success(request, _("Tag added."))
        elif change.removed:
            messages.success(request, _("Tag removed."))
    return redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#tags")


# --- Permissions (tagging/api.py: AdminWritePermission — every role reads, admins write) -------

def _require_admin(user) -> None:
    access.require_admin(user, _("Only admins may change tags and tag rules."))


# --- Forms: they parse; the services decide ---------------------------------------------------

class TagGroupForm(forms.ModelForm):
    class Meta:
        model = TagGroup
        fields = ["name", "exclusive", "description", "order"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}


class TagForm(forms.ModelForm):
    class Meta:
        model = Tag
        fields = ["name", "group", "color", "description", "order"]
        widgets = {"color": forms.TextInput(attrs={"type": "color"}),
                   "description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args, groups: list[TagGroup] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["color"].help_text = ""     # a colour picker needs no CSS syntax
        if groups is not None:   # the page has them already: no second query to render
            self.fields["group"].choices = [("", "---------"),
                                            *((g.pk, g.name) for g in groups)]


class ConditionField(forms.CharField):
    """The rule's condition as JSON text (the builder keeps the textarea in sync)."""

    widget = forms.Textarea

    def to_python(self, value):
        text = super().to_python(value)
        if text in self.empty_values:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                _("The condition is not valid JSON: %(problem)s (line %(line)d, column "
                  "%(column)d).") % {"problem": exc.msg, "line": exc.lineno,
                                     "column": exc.colno}, code="invalid") from exc

    def validate(self, value) -> None:
        if value is None:
            raise ValidationError(self.error_messages["required"], code="required")


class TagRuleForm(forms.ModelForm):
    condition = ConditionField(label=gettext_lazy("Condition"))

    class Meta:
        model = TagRule
        fields = ["name", "tag", "mode", "active", "priority", "interval_minutes", "condition"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        grouped: dict[str, list[tuple[int, str]]] = {}
        for tag in Tag.objects.select_related("group").order_by("group__order", "group__name",
                                                                  "order", "name"):
            grouped.setdefault(tag.group.name, []).append((tag.pk, tag.name))
        self.fields["tag"].choices = [("", "---------"), *grouped.items()]


def _fields(form: forms.ModelForm) -> dict:
    return {name: form.cleaned_data[name] for name in form.Meta.fields}


def _refused(form: forms.Form, exc: Exception, *, field: str | None = None) -> None:
    """Show a service's refusal next to the form (or the field it names)."""
    if isinstance(exc, ValidationError):
        for message in exc.messages:
            form.add_error(None, message)
        return
    form.add_error(field if field and exc.message.startswith(field) else None, exc.message)


# --- Tag groups and tags ----------------------------------------------------------------------

def _tags_page(request, *, group_form: TagGroupForm | None = None,
               tag_form: TagForm | None = None, status: int = 200):
    groups = selectors.tag_groups_with_tags()
    tags = [tag for group in groups for tag in group.tag_rows]
    # The customer list takes a tag's name; an id where the name is shared (or looks like one).
    names = Counter(tag.name for tag in tags)
    for tag in tags:
        tag.filter_ref = tag.name if names[tag.name] == 1 and not tag.name.isdigit() else tag.pk
    return render(request, "tagging/tags.html", {
        "groups": groups, "tag_count": len(tags),
        "can_edit": access.is_admin(request.user),
        "can_see_customers": access.can_see_customers(request.user),
        "group_form": group_form or TagGroupForm(auto_id="new-group-%s"),
        "tag_form": tag_form or TagForm(auto_id="new-tag-%s", groups=groups),
    }, status=status)


@login_required
def tags(request):
    """Tag groups as sections, each tag with its colour, its holders and its rules."""
    access.require_role(request.user)
    return _tags_page(request)


@login_required
@require_POST
def group_create(request):
    _require_admin(request.user)
    form = TagGroupForm(request.POST, auto_id="new-group-%s")
    if form.is_valid():
        try:
            group = services.tag_group_save(group=None, **_fields(form))
        except (ApplicationError, ValidationError) as exc:
            _refused(form, exc)
        else:
            messages.success(request, _("Tag group “%(name)s” created.") % {"name": group.name})
            return redirect(reverse("tagging-dashboard:tags") + f"#group-{group.pk}")
    return _tags_page(request, group_form=form, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def group_edit(request, pk: int):
    _require_admin(request.user)
    group = get_object_or_404(TagGroup, pk=pk)
    # The form works on a copy: the service compares the group as stored with the new values.
    form = TagGroupForm(request.POST or None, instance=copy.deepcopy(group))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.tag_group_save(group=group, **_fields(form))
            except (ApplicationError, ValidationError) as exc:
                _refused(form, exc, field="exclusive")
            else:
                messages.success(request, _("Tag group “%(name)s” saved.") % {"name": group.name})
                return redirect(reverse("tagging-dashboard:tags") + f"#group-{group.pk}")
        status = 400
    template = "tagging/_group_edit.html" if request.htmx else "tagging/group_edit.html"
    return render(request, template, {"group": group, "form": form}, status=status)


@login_required
@require_POST
def tag_create(request):
    _require_admin(request.user)
    form = TagForm(request.POST, auto_id="new-tag-%s")
    if form.is_valid():
        try:
            tag = services.tag_save(tag=None, **_fields(form))
        except (ApplicationError, ValidationError) as exc:
            _refused(form, exc)
        else:
            messages.success(request, _("Tag “%(name)s” created.") % {"name": tag.name})
            return redirect(reverse("tagging-dashboard:tags") + f"#tag-{tag.pk}")
    return _tags_page(request, tag_form=form, status=400)


def _tag_with_counts(pk: int) -> Tag:
    tag = selectors.tag_list().filter(pk=pk).first()
    if tag is None:
        raise Http404(_("No such tag."))
    return tag


def _tag_page(request, tag: Tag, *, form: TagForm | None = None, status: int = 200):
    """The tag's edit form, and merge and delete with what each would do."""
    others = (Tag.objects.select_related("group").exclude(pk=tag.pk)
              .order_by("group__order", "group__name", "order", "name"))
    rules = list(tag.rules.order_by("priority", "name"))
    context = {
        "tag": tag, "rules": rules, "others": others,
        "form": form or TagForm(instance=copy.deepcopy(tag), auto_id="tag-%s"),
    }
    template = "tagging/_tag_edit.html" if request.htmx else "tagging/tag_edit.html"
    return render(request, template, context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def tag_edit(request, pk: int):
    """GET: the tag's editor (a page, or the fragment the tags page shows beside its list);
    POST: save the tag (tagging.services.tag_save)."""
    _require_admin(request.user)
    tag = _tag_with_counts(pk)
    if request.method == "GET":
        return _tag_page(request, tag)
    form = TagForm(request.POST, instance=copy.deepcopy(tag), auto_id="tag-%s")
    if form.is_valid():
        try:
            services.tag_save(tag=tag, **_fields(form))
        except (ApplicationError, ValidationError) as exc:
            _refused(form, exc, field="group")
        else:
            messages.success(request, _("Tag “%(name)s” saved.") % {"name": tag.name})
            return redirect(reverse("tagging-dashboard:tags") + f"#tag-{tag.pk}")
    return _tag_page(request, tag, form=form, status=400)


@login_required
@require_POST
def tag_merge(request, pk: int):
    """Merge the tag into another (tagging.services.tag_merge). Without `confirm` the answer is
    the effect, stated, with the button that does it."""
    _require_admin(request.user)
    source = _tag_with_counts(pk)
    into = request.POST.get("into", "")
    target = selectors.tag_list().filter(pk=int(into)).first() if into.isdigit() else None
    if target is None:
        messages.error(request, _("Choose the tag to merge “%(name)s” into.")
                       % {"name": source.name})
        return redirect("tagging-dashboard:tag-edit", pk=source.pk)
    # Merging a tag into itself has no effect to state: straight to the service's refusal.
    if request.POST.get("confirm") != "1" and target.pk != source.pk:
        return render(request, "tagging/tag_merge_confirm.html", {
            "source": source, "target": target,
            "both": selectors.tag_holders_of_both(source=source, target=target),
            "rules": list(source.rules.order_by("priority", "name"))})
    try:
        change = services.tag_merge(source=source, target=target, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("tagging-dashboard:tag-edit", pk=source.pk)
    messages.success(request, _("“%(source)s” merged into “%(target)s”: %(added)d customers "
                                "gained “%(target)s”, %(removed)d lost “%(source)s”, which is "
                                "deleted.") % {"source": source.name, "target": target.name,
                                               "added": change.added,
                                               "removed": change.removed})
    return redirect(reverse("tagging-dashboard:tags") + f"#tag-{target.pk}")


@login_required
@require_POST
def tag_delete(request, pk: int):
    """Delete the tag (tagging.services.tag_delete): holders lose it, its rules go with it."""
    _require_admin(request.user)
    tag = _tag_with_counts(pk)
    rules = tag.rules.count()
    removed = services.tag_delete(tag=tag, actor=request.user)
    messages.success(request, _("Tag “%(name)s” deleted: removed from %(removed)d customers; "
                                "%(rules)d rules that added it deleted.")
                     % {"name": tag.name, "removed": removed, "rules": rules})
    return redirect("tagging-dashboard:tags")


# --- Tag rules --------------------------------------------------------------------------------

def _next_due(rule: TagRule):
    if not rule.active or rule.last_run_at is None:
        return None
    return rule.last_run_at + timedelta(minutes=rule.interval_minutes)


@login_required
def rules(request):
    """Every rule: its tag, mode, schedule and last run, and "Run now" for admins."""
    access.require_role(request.user)
    tag = request.GET.get("tag", "")
    only_tag = Tag.objects.filter(pk=int(tag)).first() if tag.isdigit() else None
    rows = selectors.tag_rule_list(tag_id=only_tag.pk if only_tag else None)
    for rule in rows:
        rule.next_due = _next_due(rule)
    return render(request, "tagging/rules.html", {
        "rules": rows, "only_tag": only_tag, "can_edit": access.is_admin(request.user)})


def _rule_page(request, rule: TagRule | None, form: TagRuleForm | None, *, condition_json: str,
               status: int = 200):
    runs = list(rule.runs.all()[:RULE_RUNS_SHOWN]) if rule else []
    if rule:
        rule.next_due = _next_due(rule)
    return render(request, "tagging/rule_edit.html", {
        "rule": rule, "form": form, "condition_json": condition_json, "runs": runs,
        "can_edit": access.is_admin(request.user)}, status=status)


def _rule_form_post(request, rule: TagRule | None):
    form = TagRuleForm(request.POST, instance=copy.deepcopy(rule) if rule else None)
    if form.is_valid():
        try:
            saved = services.tag_rule_save(rule=rule, **_fields(form))
        except (ApplicationError, ValidationError) as exc:
            _refused(form, exc, field="condition")
        else:
            messages.success(request, _("Tag rule “%(name)s” saved.") % {"name": saved.name})
            return redirect("tagging-dashboard:rule-edit", pk=saved.pk)
    # Shown again as typed, so a mistake in the JSON can be corrected in place.
    return _rule_page(request, rule, form, condition_json=request.POST.get("condition", ""),
                      status=400)


@login_required
@require_http_methods(["GET", "POST"])
def rule_create(request):
    _require_admin(request.user)
    if request.method == "POST":
        return _rule_form_post(request, None)
    tag = request.GET.get("tag", "")
    form = TagRuleForm(initial={"tag": int(tag) if tag.isdigit() else None})
    example = {"all": [{"field": "orders_count", "op": "gte", "value": 1}]}
    return _rule_page(request, None, form,
                      condition_json=json.dumps(example, indent=2, ensure_ascii=False))


@login_required
@require_http_methods(["GET", "POST"])
def rule_edit(request, pk: int):
    """The rule's form (admins) or its description (other roles), and its last runs."""
    access.require_role(request.user)
    rule = get_object_or_404(TagRule.objects.select_related("tag__group"), pk=pk)
    if request.method == "POST":
        _require_admin(request.user)
        return _rule_form_post(request, rule)
    form = TagRuleForm(instance=rule) if access.is_admin(request.user) else None
    return _rule_page(request, rule, form,
                      condition_json=json.dumps(rule.condition, indent=2, ensure_ascii=False))


@login_required
@require_POST
def rule_run(request, pk: int):
    """Run the rule now (tagging.services.tag_rule_run, as the API's `run` action) and say
    what it did."""
    _require_admin(request.user)
    rule = get_object_or_404(TagRule, pk=pk)
    run = services.tag_rule_run(rule=rule, trigger=TagRuleRun.Trigger.MANUAL)
    if run is None:
        messages.error(request, _("This rule is running in another worker right now."))
    else:
        messages.success(request, _(
            "“%(name)s” ran: %(matched)d matched, %(added)d added, %(removed)d removed, in "
            "%(ms)d ms.") % {"name": rule.name, "matched": run.matched, "added": run.added,
                             "removed": run.removed, "ms": run.duration_ms})
    return redirect(posted_next(request, reverse("tagging-dashboard:rules")))
