"""Stage models: ordered stages with entry conditions; each customer's current stage per model
and the history of every move."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from core.models import TimeStampedModel


class StageModel(TimeStampedModel):
    """A lifecycle model (生命周期模型). `thresholds` are the model's editable numbers; stage
    conditions refer to them as `{"threshold": "name"}`, so changing one changes every rule
    that uses it, and a simulation can try other values without touching the rules."""

    key = models.SlugField(_("key"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    active = models.BooleanField(_("active"), default=True)
    monotonic = models.BooleanField(
        _("monotonic"), default=False,
        help_text=_("Customers only move forward; only an admin may move one back."))
    thresholds = models.JSONField(_("thresholds"), default=dict, blank=True)
    lock_days = models.PositiveIntegerField(
        _("lock after a manual move (days)"), default=7,
        help_text=_("Evaluation leaves a manually moved customer where they were put this long."))
    interval_minutes = models.PositiveIntegerField(_("evaluate every (minutes)"), default=15)
    built_in = models.BooleanField(_("built in"), default=False, editable=False)
    order = models.PositiveIntegerField(pgettext_lazy("sort order", "order"), default=0)
    last_evaluated_at = models.DateTimeField(_("last evaluated at"), null=True, blank=True)
    last_full_evaluated_at = models.DateTimeField(
        _("last evaluated in full at"), null=True, blank=True,
        help_text=_("A periodic run reads every customer once a day; the others only those "
                    "whose conditions may have changed with time (docs/DOMAIN.md)."))

    class Meta:
        verbose_name = _("stage model")
        verbose_name_plural = _("stage models")
        ordering = ["order", "key"]

    def __str__(self) -> str:
        return self.name


class Stage(TimeStampedModel):
    """A stage of a model. `position` orders the stages along the lifecycle (funnels, monotonic
    moves); `precedence` decides which stage wins when a customer meets several conditions
    (lowest first). A stage without a condition is the fallback for everyone else."""

    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="stages")
    key = models.SlugField(_("key"), max_length=32)
    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    position = models.PositiveIntegerField(_("position"), default=0)
    precedence = models.PositiveIntegerField(_("precedence"), default=100)
    color = models.CharField(_("colour"), max_length=16, default="#64748b")
    condition = models.JSONField(_("entry condition"), null=True, blank=True)
    win_back_from = models.BooleanField(
        _("leaving it is a win-back"), default=False,
        help_text=_("A move out of this stage to a stage of a later position or an earlier "
                    "one that is not also marked is recorded as a win-back (回流)."))

    class Meta:
        verbose_name = _("stage")
        verbose_name_plural = _("stages")
        ordering = ["model", "position", "key"]
        constraints = [
            models.UniqueConstraint(fields=["model", "key"], name="lifecycle_stage_key"),
            models.UniqueConstraint(fields=["model", "position"], name="lifecycle_stage_position"),
        ]

    def __str__(self) -> str:
        return f"{self.model.key}:{self.key}"


class TransitionSource(models.TextChoices):
    RULE = "rule", _("Rule")
    MANUAL = "manual", _("Manual")
    EVENT = "event", _("Event")
    SYSTEM = "system", _("System")


class CustomerStage(models.Model):
    """A customer's current stage in one model."""

    id = models.BigAutoField(primary_key=True)
    # (customer, model) and (model, stage, customer) are the indexes its queries use. An
    # evaluation writes a row per customer and model at once, so the references are kept by
    # Django's on_delete (and `orphans_sweep` for a customer deleted mid-run), not by per-row
    # database triggers that would lock every customer row at commit.
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="customer_stages",
                                 db_index=False, db_constraint=False)
    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="customer_stages", db_index=False, db_constraint=False)
    stage = models.ForeignKey(Stage, verbose_name=_("stage"), on_delete=models.PROTECT,
                              related_name="customer_stages", db_index=False,
                              db_constraint=False)
    entered_at = models.DateTimeField(_("entered at"))
    source = models.CharField(_("source"), max_length=16, choices=TransitionSource.choices)
    locked_until = models.DateTimeField(_("locked until"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer stage")
        verbose_name_plural = _("customer stages")
        constraints = [
            models.UniqueConstraint(fields=["customer", "model"],
                                    name="lifecycle_one_stage_per_model"),
        ]
        indexes = [
            models.Index(fields=["model", "stage", "customer"], name="lifecycle_cs_stage"),
            # The board: each stage's newest arrivals first.
            models.Index(fields=["model", "stage", "-entered_at", "-id"],
                         name="lifecycle_cs_arrivals"),
            models.Index(fields=["locked_until"], name="lifecycle_cs_locked",
                         condition=Q(locked_until__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.stage}"


class StageTransition(models.Model):
    """One move of a customer between stages: the history. Append-only and written in bulk,
    so it keeps two indexes, (customer, at) and (model, at), and its references are kept by
    Django's on_delete rather than per-row database triggers; keys are copied."""

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="stage_transitions",
                                 db_index=False, db_constraint=False)
    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="transitions", db_index=False, db_constraint=False)
    from_stage = models.ForeignKey(Stage, verbose_name=_("from"), null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+", db_index=False,
                                   db_constraint=False)
    to_stage = models.ForeignKey(Stage, verbose_name=_("to"), null=True,
                                 on_delete=models.SET_NULL, related_name="+", db_index=False,
                                 db_constraint=False)
    from_key = models.CharField(_("from (key)"), max_length=32, blank=True)
    to_key = models.CharField(_("to (key)"), max_length=32)
    at = models.DateTimeField(_("at"))
    source = models.CharField(_("source"), max_length=16, choices=TransitionSource.choices)
    reason = models.CharField(_("reason"), max_length=500, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+",
                              db_index=False, db_constraint=False)
    win_back = models.BooleanField(_("win-back (回流)"), default=False)
    backward = models.BooleanField(_("backward move"), default=False)

    class Meta:
        verbose_name = _("stage transition")
        verbose_name_plural = _("stage transitions")
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["customer", "at"], name="lifecycle_tr_customer"),
            models.Index(fields=["model", "at"], name="lifecycle_tr_model"),
            # The transition log, newest first: of one model, and of all.
            models.Index(fields=["model", "-at", "-id"], name="lifecycle_tr_log"),
            models.Index(fields=["-at", "-id"], name="lifecycle_tr_log_all"),
            # The metrics: customers entering a stage (e.g. churn) in a range, from the index.
            models.Index(fields=["model", "to_key", "at"], include=["customer"],
                         name="lifecycle_tr_entered"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.from_key or '∅'} → {self.to_key}"


class BulkStageJob(TimeStampedModel):
    """Moving many customers to a stage by hand (the customer list's bulk action), run in
    the background with progress when the set is large; `last_customer_id` is where a resumed
    job carries on."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"),
                              on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="+")
    stage = models.ForeignKey(Stage, verbose_name=_("stage"), on_delete=models.CASCADE,
                              related_name="+")
    reason = models.CharField(_("reason"), max_length=500)
    condition = models.JSONField(_("condition"), null=True, blank=True)
    customer_ids = models.JSONField(_("customer ids"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    total = models.PositiveIntegerField(_("customers"), default=0)
    processed = models.PositiveIntegerField(_("processed"), default=0)
    moved = models.PositiveIntegerField(_("moved"), default=0)
    refused = models.PositiveIntegerField(_("refused"), default=0)
    last_customer_id = models.BigIntegerField(_("resume after customer id"), default=0)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("bulk stage job")
        verbose_name_plural = _("bulk stage jobs")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"], name="lifecycle_bulkjob_status")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.status}"
