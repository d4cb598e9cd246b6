"""Tags: groups (some exclusive), customers' tags with their source and expiry, the history of
every change, rules that tag by condition, saved segments and background bulk-tag jobs."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from core.models import TimeStampedModel


class TagGroup(TimeStampedModel):
    name = models.CharField(_("name"), max_length=64, unique=True)
    key = models.SlugField(_("system key"), max_length=64, unique=True, null=True, blank=True,
                           help_text=_("Set for built-in groups such as the value layers."))
    exclusive = models.BooleanField(
        _("exclusive"), default=False,
        help_text=_("A customer holds at most one tag of this group; setting another replaces "
                    "it."))
    description = models.TextField(_("description"), blank=True)
    order = models.PositiveIntegerField(pgettext_lazy("sort order", "order"), default=0)

    class Meta:
        verbose_name = _("tag group")
        verbose_name_plural = _("tag groups")
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name


class Tag(TimeStampedModel):
    group = models.ForeignKey(TagGroup, verbose_name=_("tag group"), on_delete=models.CASCADE,
                              related_name="tags")
    name = models.CharField(_("name"), max_length=64)
    key = models.SlugField(_("system key"), max_length=64, null=True, blank=True)
    color = models.CharField(_("colour"), max_length=16, default="#64748b",
                             help_text=_("CSS colour, e.g. #2563eb."))
    description = models.TextField(_("description"), blank=True)
    order = models.PositiveIntegerField(pgettext_lazy("sort order", "order"), default=0)

    class Meta:
        verbose_name = _("tag")
        verbose_name_plural = _("tags")
        ordering = ["group__order", "order", "name"]
        constraints = [
            models.UniqueConstraint(fields=["group", "name"], name="tagging_tag_name_per_group"),
            models.UniqueConstraint(fields=["group", "key"], name="tagging_tag_key_per_group",
                                    condition=Q(key__isnull=False)),
        ]

    def __str__(self) -> str:
        return self.name


class TagSource(models.TextChoices):
    MANUAL = "manual", _("Manual")
    RULE = "rule", _("Rule")
    IMPORT = "import", _("Import")
    SYNC = "sync", _("Sync")


class CustomerTag(models.Model):
    """A tag a customer holds now. `exclusive_group` repeats the group id when the group is
    exclusive (NULL otherwise), so one unique constraint enforces "at most one per group".

    Rule runs write hundreds of thousands of these rows at once, so the table carries only the
    indexes its queries use — (customer, tag), (tag, customer), (customer, exclusive group),
    expiry (a sync rule finds its rows by tag) — and no database foreign keys: their per-row
    checks at COMMIT took 83 s of a first run tagging a million customers, each locking the
    customer's row. Django's `on_delete` deletes a customer's or a tag's rows, and the nightly
    `tagging.tasks.sweep_orphans` removes what a rule run wrote for a customer deleted while it
    ran (docs/PERFORMANCE.md, "Tag rules and segments")."""

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="customer_tags",
                                 db_index=False, db_constraint=False)
    tag = models.ForeignKey(Tag, verbose_name=_("tag"), on_delete=models.CASCADE,
                            related_name="customer_tags", db_index=False, db_constraint=False)
    exclusive_group = models.ForeignKey(TagGroup, null=True, blank=True, editable=False,
                                        on_delete=models.CASCADE, related_name="+",
                                        db_index=False, db_constraint=False)
    source = models.CharField(_("source"), max_length=16, choices=TagSource.choices,
                              default=TagSource.MANUAL)
    rule = models.ForeignKey("TagRule", verbose_name=_("rule"), null=True, blank=True,
                             on_delete=models.SET_NULL, related_name="+", db_index=False,
                             db_constraint=False)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("added by"), null=True,
                                 blank=True, on_delete=models.SET_NULL, related_name="+",
                                 db_index=False, db_constraint=False)
    added_at = models.DateTimeField(_("added at"))
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer tag")
        verbose_name_plural = _("customer tags")
        constraints = [
            models.UniqueConstraint(fields=["customer", "tag"], name="tagging_one_tag_once"),
            models.UniqueConstraint(fields=["customer", "exclusive_group"],
                                    name="tagging_one_tag_per_exclusive_group",
                                    condition=Q(exclusive_group__isnull=False)),
        ]
        indexes = [
            models.Index(fields=["tag", "customer"], name="tagging_ct_tag_customer"),
            models.Index(fields=["expires_at"], name="tagging_ct_expires",
                         condition=Q(expires_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}:{self.tag_id}"


class TagChange(models.Model):
    """One row per tag added to or removed from a customer: the history and the timeline.
    Names are copied, so renaming, merging or deleting a tag keeps what the customer saw."""

    class Action(models.TextChoices):
        ADDED = "added", _("Added")
        REMOVED = "removed", _("Removed")
        EXPIRED = "expired", _("Expired")
        REPLACED = "replaced", _("Replaced (exclusive group)")
        MERGED = "merged", _("Merged into another tag")
        DELETED = "deleted", _("Tag deleted")

    id = models.BigAutoField(primary_key=True)
    # History is append-only and written in bulk: (customer, at) is its one index, and the
    # references are kept by Django's on_delete, not by per-row database triggers.
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="tag_changes",
                                 db_index=False, db_constraint=False)
    tag = models.ForeignKey(Tag, verbose_name=_("tag"), null=True, blank=True,
                            on_delete=models.SET_NULL, related_name="changes", db_index=False,
                            db_constraint=False)
    tag_name = models.CharField(_("tag name"), max_length=64)
    group_name = models.CharField(_("group name"), max_length=64)
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    source = models.CharField(_("source"), max_length=16, choices=TagSource.choices)
    rule = models.ForeignKey("TagRule", verbose_name=_("rule"), null=True, blank=True,
                             on_delete=models.SET_NULL, related_name="+", db_index=False,
                             db_constraint=False)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+",
                              db_index=False, db_constraint=False)
    at = models.DateTimeField(_("at"))

    class Meta:
        verbose_name = _("tag change")
        verbose_name_plural = _("tag changes")
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["customer", "at"], name="tagging_change_customer")]

    def __str__(self) -> str:
        return f"{self.action} {self.tag_name}"


class TagRule(TimeStampedModel):
    class Mode(models.TextChoices):
        ADD = "add", _("Add only")
        SYNC = "sync", _("Sync (also remove from customers who no longer match)")

    name = models.CharField(_("name"), max_length=100)
    tag = models.ForeignKey(Tag, verbose_name=_("tag"), on_delete=models.CASCADE,
                            related_name="rules")
    condition = models.JSONField(_("condition"))
    mode = models.CharField(_("mode"), max_length=8, choices=Mode.choices, default=Mode.ADD)
    active = models.BooleanField(_("active"), default=True)
    priority = models.PositiveIntegerField(
        _("priority"), default=100,
        help_text=_("In an exclusive group, a customer matching several rules gets the tag of "
                    "the rule with the lowest priority number."))
    interval_minutes = models.PositiveIntegerField(_("run every (minutes)"), default=60)
    last_run_at = models.DateTimeField(_("last run at"), null=True, blank=True)
    last_full_run_at = models.DateTimeField(
        _("last run in full at"), null=True, blank=True,
        help_text=_("A scheduled run reads every customer once a day; the others only those "
                    "whose condition may have changed with time (docs/DOMAIN.md)."))

    class Meta:
        verbose_name = _("tag rule")
        verbose_name_plural = _("tag rules")
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name


class TagRuleRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", _("Schedule")
        MANUAL = "manual", _("On demand")
        INCREMENTAL = "incremental", _("New events or orders")

    id = models.BigAutoField(primary_key=True)
    rule = models.ForeignKey(TagRule, verbose_name=_("rule"), on_delete=models.CASCADE,
                             related_name="runs")
    trigger = models.CharField(_("trigger"), max_length=16, choices=Trigger.choices)
    started_at = models.DateTimeField(_("started at"))
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)
    matched = models.PositiveIntegerField(_("matched"), default=0)
    added = models.PositiveIntegerField(_("added"), default=0)
    removed = models.PositiveIntegerField(_("removed"), default=0)
    scope_size = models.PositiveIntegerField(
        _("customers evaluated"), null=True, blank=True,
        help_text=_("Set for incremental runs: how many customers were re-evaluated."))

    class Meta:
        verbose_name = _("tag rule run")
        verbose_name_plural = _("tag rule runs")
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["rule", "started_at"], name="tagging_run_rule")]

    def __str__(self) -> str:
        return f"{self.rule_id} @ {self.started_at:%Y-%m-%d %H:%M}"


class Segment(TimeStampedModel):
    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    condition = models.JSONField(_("condition"))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("created by"),
                                   null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BulkTagJob(TimeStampedModel):
    """Adding or removing tags for many customers, run in the background with progress."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"),
                              on_delete=models.CASCADE, related_name="+")
    add = models.JSONField(_("tags to add"), default=list)      # tag ids
    remove = models.JSONField(_("tags to remove"), default=list)
    condition = models.JSONField(_("condition"), null=True, blank=True)
    customer_ids = models.JSONField(_("customer ids"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    total = models.PositiveIntegerField(_("customers"), default=0)
    processed = models.PositiveIntegerField(_("processed"), default=0)
    added = models.PositiveIntegerField(_("added"), default=0)
    removed = models.PositiveIntegerField(_("removed"), default=0)
    last_customer_id = models.BigIntegerField(_("resume after customer id"), default=0)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("bulk tag job")
        verbose_name_plural = _("bulk tag jobs")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.status}"


class SegmentIndex(models.Model):
    """One build of the segment index (`tagging.segment_index`): the customers' columns, tags
    and event counts that segment previews read, as they were at `built_at` — every customer
    (a full build), or the customers changed since the full build `base`, whose parts a
    reader lays over the base's."""

    built_at = models.DateTimeField(_("data as of"), db_index=True)
    base = models.ForeignKey("self", verbose_name=_("full build"), null=True, blank=True,
                             on_delete=models.CASCADE, related_name="updates")
    changed = models.PositiveIntegerField(
        _("customers re-read"), default=0,
        help_text=_("An update: the customers changed since its full build, read again."))
    signature = models.CharField(
        _("shape"), max_length=500, blank=True,
        help_text=_("What the parts hold (stage models, event types); another shape takes a "
                    "full build."))
    customers = models.PositiveIntegerField(_("customers"), default=0)
    size_bytes = models.BigIntegerField(_("stored size (bytes)"), default=0)
    seconds = models.FloatField(_("build time (s)"), default=0)

    class Meta:
        verbose_name = _("segment index")
        verbose_name_plural = _("segment indexes")
        ordering = ["-built_at"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.built_at:%Y-%m-%d %H:%M}"


class SegmentIndexPart(models.Model):
    """A named part of a build (`customers`, `tags`, `events:<type>`, `attributes`): numpy
    arrays, compressed. A preview loads only the parts its condition reads."""

    index = models.ForeignKey(SegmentIndex, verbose_name=_("segment index"),
                              on_delete=models.CASCADE, related_name="parts")
    name = models.CharField(_("name"), max_length=100)
    data = models.BinaryField(_("data"))

    class Meta:
        verbose_name = _("segment index part")
        verbose_name_plural = _("segment index parts")
        constraints = [models.UniqueConstraint(fields=["index", "name"],
                                               name="tagging_segment_index_part_once")]

    def __str__(self) -> str:
        return self.name
