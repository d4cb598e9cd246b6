"""Outreach: stage-matched SOPs and their enrolments, one-off campaigns, the outbox every
message goes through, the send-time policy, and the to-dos operators work from."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from core.models import TimeStampedModel


class Channel(models.TextChoices):
    CONSOLE = "console", _("Console (log)")
    EMAIL = "email", _("E-mail")
    SMS = "sms", _("SMS")
    WEBHOOK = "webhook", _("Webhook")
    WECOM = "wecom", _("WeCom")
    MANUAL = "manual", _("Manual (operator to-do)")


class Category(models.TextChoices):
    SERVICE = "service", _("Service")
    CONTENT = "content", _("Content")
    PROMOTIONAL = "promotional", _("Promotional")


class Sop(TimeStampedModel):
    """A stage-matched outreach plan (触达SOP): steps sent after a customer enters a stage."""

    name = models.CharField(_("name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    model = models.ForeignKey("lifecycle.StageModel", verbose_name=_("stage model"),
                              on_delete=models.CASCADE, related_name="sops")
    stage = models.ForeignKey("lifecycle.Stage", verbose_name=_("stage"),
                              on_delete=models.CASCADE, related_name="sops")
    active = models.BooleanField(_("active"), default=True)
    holdout_percent = models.PositiveSmallIntegerField(
        _("holdout (%)"), default=0,
        help_text=_("This share of entering customers is kept out as a control group."))
    goal = models.JSONField(
        _("goal"), null=True, blank=True,
        help_text=_("A condition; a customer who meets it has reached the goal and the SOP "
                    "ends for them (e.g. placed an order)."))
    override_stage_guard = models.BooleanField(_("stage guard overridden"), default=False)
    overridden_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                      verbose_name=_("overridden by"), on_delete=models.SET_NULL,
                                      related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   verbose_name=_("created by"), on_delete=models.SET_NULL,
                                   related_name="+")
    built_in = models.BooleanField(_("built in"), default=False, editable=False)

    class Meta:
        verbose_name = _("SOP")
        verbose_name_plural = _("SOPs")
        ordering = ["model", "stage__position", "name"]

    def __str__(self) -> str:
        return self.name


class SopStep(models.Model):
    sop = models.ForeignKey(Sop, verbose_name=_("SOP"), on_delete=models.CASCADE,
                            related_name="steps")
    order = models.PositiveIntegerField(pgettext_lazy("sort order", "order"))
    delay_minutes = models.PositiveIntegerField(
        _("delay after entry (minutes)"), default=0,
        help_text=_("Sent this long after the customer entered the stage."))
    day = models.PositiveSmallIntegerField(
        _("day"), null=True, blank=True,
        help_text=_("Or: on day N after entry (day 0 = the day of entry) at `at_time`."))
    at_time = models.TimeField(_("at (local time)"), null=True, blank=True)
    channel = models.CharField(pgettext_lazy("outreach", "channel"), max_length=16,
                               choices=Channel.choices,
                               default=Channel.WECOM)
    category = models.CharField(pgettext_lazy("content category", "category"), max_length=16,
                                choices=Category.choices,
                                default=Category.CONTENT)
    template = models.TextField(_("template"))
    condition = models.JSONField(_("extra condition"), null=True, blank=True)
    paused = models.BooleanField(_("paused"), default=False)
    paused_reason = models.CharField(_("paused because"), max_length=300, blank=True)
    counted_since = models.DateTimeField(
        _("block rate counted since"), null=True, blank=True,
        help_text=_("Set when a paused step is resumed: its block rate starts afresh."))

    class Meta:
        verbose_name = _("SOP step")
        verbose_name_plural = _("SOP steps")
        ordering = ["sop", "order"]
        constraints = [models.UniqueConstraint(fields=["sop", "order"],
                                               name="campaigns_step_order")]

    def __str__(self) -> str:
        return f"{self.sop} #{self.order}"


class Enrollment(models.Model):
    """A customer going through an SOP after one entry into its stage. `entered_at` is the
    stage entry, so one entry never enrols twice and a later re-entry enrols again."""

    class Status(models.TextChoices):
        ACTIVE = "active", pgettext_lazy("enrolment status", "Active")
        HOLDOUT = "holdout", _("Control group (no messages)")
        COMPLETED = "completed", _("Completed")
        GOAL = "goal", _("Goal reached")
        EXITED = "exited", _("Exited")

    id = models.BigAutoField(primary_key=True)
    sop = models.ForeignKey(Sop, verbose_name=_("SOP"), on_delete=models.CASCADE,
                            related_name="enrollments")
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="enrollments")
    entered_at = models.DateTimeField(_("stage entered at"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.ACTIVE)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    exit_reason = models.CharField(_("exit reason"), max_length=32, blank=True)

    class Meta:
        verbose_name = _("enrolment")
        verbose_name_plural = _("enrolments")
        constraints = [models.UniqueConstraint(fields=["sop", "customer", "entered_at"],
                                               name="campaigns_one_enrolment_per_entry")]
        indexes = [
            models.Index(fields=["customer", "status"], name="campaigns_enr_customer"),
            models.Index(fields=["sop", "status"], name="campaigns_enr_sop"),
            # One stage entry's enrolments (the messages of each step are queued from them):
            # without it, every entry read all the SOP's enrolments, more as the day goes on.
            models.Index(fields=["sop", "entered_at"], name="campaigns_enr_sop_entered"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.sop_id}"


class Campaign(TimeStampedModel):
    """A one-off or scheduled send (群发) to a segment or a condition."""

    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        SCHEDULED = "scheduled", _("Scheduled")
        SENDING = "sending", _("Sending")
        DONE = "done", _("Done")
        CANCELLED = "cancelled", _("Cancelled")

    name = models.CharField(_("name"), max_length=100)
    segment = models.ForeignKey("tagging.Segment", verbose_name=_("segment"), null=True,
                                blank=True, on_delete=models.PROTECT, related_name="+")
    condition = models.JSONField(_("condition"), null=True, blank=True)
    channel = models.CharField(pgettext_lazy("outreach", "channel"), max_length=16,
                               choices=Channel.choices,
                               default=Channel.WECOM)
    category = models.CharField(pgettext_lazy("content category", "category"), max_length=16,
                                choices=Category.choices,
                                default=Category.PROMOTIONAL)
    template = models.TextField(_("template"))
    send_at = models.DateTimeField(_("send at"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.DRAFT)
    audience_size = models.PositiveIntegerField(_("audience"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    override_stage_guard = models.BooleanField(_("stage guard overridden"), default=False)
    overridden_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                      verbose_name=_("overridden by"), on_delete=models.SET_NULL,
                                      related_name="+")
    holdout_percent = models.PositiveSmallIntegerField(
        _("holdout (%)"), default=0,
        help_text=_("This share of the audience is kept out as a control group, to measure "
                    "the campaign's uplift."))
    paused = models.BooleanField(_("paused"), default=False)
    paused_reason = models.CharField(_("paused because"), max_length=300, blank=True)
    counted_since = models.DateTimeField(
        _("block rate counted since"), null=True, blank=True,
        help_text=_("Set when a paused campaign is resumed: its block rate starts afresh."))
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   verbose_name=_("created by"), on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class CampaignControl(models.Model):
    """A customer of a campaign's audience kept out as its control group (holdout): sent
    nothing, compared with those who were sent it."""

    id = models.BigAutoField(primary_key=True)
    campaign = models.ForeignKey(Campaign, verbose_name=_("campaign"), on_delete=models.CASCADE,
                                 related_name="controls")
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="+")

    class Meta:
        verbose_name = _("campaign control customer")
        verbose_name_plural = _("campaign control customers")
        constraints = [models.UniqueConstraint(fields=["campaign", "customer"],
                                               name="campaigns_one_control_per_customer")]

    def __str__(self) -> str:
        return f"{self.customer_id} held out of {self.campaign_id}"


class Message(models.Model):
    """The outbox: a message is a row before it is anything else. `dedupe_key` is unique, so
    nothing is ever queued — and so sent — twice."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        # Handed to a channel where a person still confirms the send (a WeCom mass send waits
        # for the staff member in the WeCom client); the channel's results make it sent.
        SUBMITTED = "submitted", _("Awaiting confirmation")
        SENT = "sent", _("Sent")
        DELIVERED = "delivered", _("Delivered")
        READ = "read", _("Read")
        REPLIED = "replied", _("Replied")
        FAILED = "failed", _("Failed")
        SKIPPED = "skipped", _("Skipped")

    class SkipReason(models.TextChoices):
        OPTED_OUT = "opted_out", _("Opted out")
        DELETED_US = "deleted_us", _("Deleted us")
        FREQUENCY_CAP = "frequency_cap", _("Frequency cap")
        LEFT_STAGE = "left_stage", _("Left the stage")
        GOAL_REACHED = "goal_reached", _("Goal reached")
        CONDITION = "condition", _("Step condition not met")
        PAUSED = "paused", _("Step or campaign paused")
        CANCELLED = "cancelled", _("Campaign cancelled")
        NO_ADDRESS = "no_address", _("No address for the channel")
        TEMPLATE_ERROR = "template_error", _("The template failed for this customer")
        NOT_A_FRIEND = "not_a_friend", _("Not a contact of the sender")
        PLATFORM_QUOTA = "platform_quota", _("Already received a mass message today")

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"),
                                 on_delete=models.CASCADE, related_name="messages")
    channel = models.CharField(pgettext_lazy("outreach", "channel"), max_length=16,
                               choices=Channel.choices)
    category = models.CharField(pgettext_lazy("content category", "category"), max_length=16,
                                choices=Category.choices)
    content = models.TextField(_("content"), blank=True,
                               help_text=_("SOP messages are written when they are sent."))
    sop_step = models.ForeignKey(SopStep, verbose_name=_("SOP step"), null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="messages")
    enrollment = models.ForeignKey(Enrollment, verbose_name=_("enrolment"), null=True,
                                   blank=True, on_delete=models.CASCADE, related_name="messages")
    campaign = models.ForeignKey(Campaign, verbose_name=_("campaign"), null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="messages")
    dedupe_key = models.CharField(_("dedupe key"), max_length=120, unique=True)
    due_at = models.DateTimeField(_("due at"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    skip_reason = models.CharField(_("skip reason"), max_length=16, choices=SkipReason.choices,
                                   blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    provider_id = models.CharField(_("provider id"), max_length=128, blank=True, db_index=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    read_at = models.DateTimeField(_("read at"), null=True, blank=True)
    replied_at = models.DateTimeField(_("replied at"), null=True, blank=True)
    clicked_at = models.DateTimeField(_("clicked at"), null=True, blank=True)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["-due_at", "-id"]
        indexes = [
            models.Index(fields=["due_at"], name="campaigns_msg_due",
                         condition=Q(status="queued")),
            models.Index(fields=["claimed_at"], name="campaigns_msg_sending",
                         condition=Q(status="sending")),
            models.Index(fields=["customer", "channel", "category", "sent_at"],
                         name="campaigns_msg_customer"),
            models.Index(fields=["campaign", "status"], name="campaigns_msg_campaign"),
            models.Index(fields=["sop_step", "status"], name="campaigns_msg_step"),
            # The outbox page: newest due first, of every status or of one.
            models.Index(fields=["due_at", "id"], name="campaigns_msg_outbox"),
            models.Index(fields=["status", "due_at", "id"], name="campaigns_msg_outbox_status"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} → {self.customer_id} ({self.status})"


class OutreachPolicy(models.Model):
    """The send-time rules, one row, editable by admins."""

    promo_min_days_between = models.PositiveSmallIntegerField(
        _("days between promotional messages"), default=3)
    promo_max_per_month = models.PositiveSmallIntegerField(
        _("promotional messages per calendar month and channel"), default=4)
    block_window_hours = models.PositiveSmallIntegerField(
        _("a deletion this soon after a message is a block (hours)"), default=48)
    block_rate_pause = models.DecimalField(
        _("pause a step above this block rate"), max_digits=5, decimal_places=4,
        default="0.0200")
    block_min_sends = models.PositiveIntegerField(_("…after at least this many sends"),
                                                  default=200)
    max_attempts = models.PositiveSmallIntegerField(_("send attempts before failing"),
                                                    default=5)

    class Meta:
        verbose_name = _("outreach policy")
        verbose_name_plural = _("outreach policy")

    def __str__(self) -> str:
        return str(_("Outreach policy"))


class OperatorTask(TimeStampedModel):
    """A to-do for a staff member: a 1-to-1 follow-up step, a churn warning, an alert."""

    class Kind(models.TextChoices):
        FOLLOW_UP = "follow_up", _("Follow-up (SOP step)")
        CHURN_WARNING = "churn_warning", _("Churn warning")
        ALERT = "alert", _("Alert")

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        DONE = "done", _("Done")
        SKIPPED = "skipped", _("Skipped")

    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("for"),
                                 on_delete=models.CASCADE, related_name="operator_tasks")
    customer = models.ForeignKey("crm.Customer", verbose_name=_("customer"), null=True,
                                 blank=True, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    title = models.CharField(_("title"), max_length=200)
    body = models.TextField(_("details"), blank=True)
    due_at = models.DateTimeField(_("due at"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.OPEN)
    message = models.OneToOneField(Message, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="task", verbose_name=_("message"))
    dedupe_key = models.CharField(_("dedupe key"), max_length=120, unique=True)
    closed_at = models.DateTimeField(_("closed at"), null=True, blank=True)
    closed_note = models.CharField(_("note"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("operator task")
        verbose_name_plural = _("operator tasks")
        ordering = ["status", "due_at"]
        indexes = [models.Index(fields=["assignee", "status", "due_at"],
                                name="campaigns_task_assignee")]

    def __str__(self) -> str:
        return self.title
