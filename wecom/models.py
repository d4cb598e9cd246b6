"""What the WeCom integration keeps: callbacks as received (one row per callback, a retry is the
same row), sync runs and their cursors, the links between WeCom's corp tags and the tags here,
channel QR codes, and the mass sends made through WeCom."""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Callback(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", _("Received")
        PROCESSED = "processed", _("Processed")
        FAILED = "failed", _("Failed")

    id = models.BigAutoField(primary_key=True)
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    msg_signature = models.CharField(_("signature"), max_length=64)
    timestamp = models.CharField(_("timestamp"), max_length=32)
    nonce = models.CharField(_("nonce"), max_length=64)
    xml = models.TextField(_("decrypted XML"))
    event = models.CharField(_("event"), max_length=64, blank=True)
    change_type = models.CharField(_("change type"), max_length=64, blank=True)
    external_user_id = models.CharField(_("external user id"), max_length=128, blank=True)
    user_id = models.CharField(_("staff user id"), max_length=64, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.RECEIVED)
    error = models.TextField(_("error or note"), blank=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("WeCom callback")
        verbose_name_plural = _("WeCom callbacks")
        constraints = [
            # WeCom resends a callback unchanged: the retry is this same row.
            models.UniqueConstraint(fields=["nonce", "timestamp", "msg_signature"],
                                    name="wecom_callback_once"),
        ]
        indexes = [
            # the replay guard looks nonces up; the sweeper and the dashboard look statuses up
            models.Index(fields=["nonce", "received_at"], name="wecom_cb_nonce"),
            models.Index(fields=["status", "received_at"], name="wecom_cb_status"),
        ]

    def __str__(self) -> str:
        return f"{self.event or '?'}/{self.change_type or '-'} {self.received_at:%Y-%m-%d %H:%M}"


class SyncRun(models.Model):
    """One run of a sync from WeCom (contacts, groups or tags): resumable from `state` (the
    cursor reached), with its progress and the items that failed."""

    class Kind(models.TextChoices):
        CONTACTS = "contacts", _("Contacts")
        GROUPS = "groups", _("Customer groups")
        TAGS = "tags", _("Tags")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    class Trigger(models.TextChoices):
        MANUAL = "manual", _("By hand")
        DASHBOARD = "dashboard", _("From the dashboard")
        COMMAND = "command", _("From the command line")
        BEAT = "beat", _("On schedule")

    trigger = models.CharField(_("started by"), max_length=16, choices=Trigger.choices,
                               default=Trigger.MANUAL)
    state = models.JSONField(_("cursor"), default=dict, blank=True)
    processed = models.PositiveIntegerField(_("processed"), default=0)
    created = models.PositiveIntegerField(_("created"), default=0)
    updated = models.PositiveIntegerField(_("updated"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    failures = models.JSONField(_("failures"), default=list, blank=True)   # the first 200
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("WeCom sync run")
        verbose_name_plural = _("WeCom sync runs")
        ordering = ["-created_at"]
        constraints = [
            # one run of a kind at a time: a second request joins the running one
            models.UniqueConstraint(fields=["kind"], condition=models.Q(
                status__in=["queued", "running"]), name="wecom_sync_one_open_per_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def percent(self) -> int | None:
        """How far a run is, where it can be known: the share of staff whose contacts were
        read (contacts), or the phase reached (tags); None for groups (WeCom gives no total)."""
        if self.status == self.Status.DONE:
            return 100
        if self.kind == self.Kind.CONTACTS and self.state.get("users"):
            return min(99, round(100 * self.state.get("pos", 0) / len(self.state["users"])))
        if self.kind == self.Kind.TAGS:
            return {"pull": 0, "push": 33, "marks": 66}.get(self.state.get("phase", "pull"))
        return None


class TagLink(models.Model):
    """A WeCom corp tag or tag group and the tag or tag group it is here. `name` is the name
    both sides last agreed on: a local rename shows as a difference and is pushed."""

    class Kind(models.TextChoices):
        GROUP = "group", _("Tag group")
        TAG = "tag", _("Tag")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    wecom_id = models.CharField(_("WeCom id"), max_length=64, unique=True)
    tag = models.OneToOneField("tagging.Tag", verbose_name=_("tag"), null=True, blank=True,
                               on_delete=models.SET_NULL, related_name="wecom_link")
    group = models.OneToOneField("tagging.TagGroup", verbose_name=_("tag group"), null=True,
                                 blank=True, on_delete=models.SET_NULL,
                                 related_name="wecom_link")
    name = models.CharField(_("name"), max_length=64)
    # Where the tag was made: one made here stays when WeCom loses its copy (and is sent again);
    # one made in WeCom goes when WeCom deletes it.
    origin = models.CharField(_("made in"), max_length=8, default="wecom",
                              choices=[("wecom", _("WeCom")), ("here", _("this CRM"))])
    synced_at = models.DateTimeField(_("synced at"), default=timezone.now)

    class Meta:
        verbose_name = _("WeCom tag link")
        verbose_name_plural = _("WeCom tag links")

    def __str__(self) -> str:
        return f"{self.name} ({self.wecom_id})"


class ContactWay(models.Model):
    """A channel QR code (渠道活码): WeCom's 「联系我」 configuration whose `state` is the
    channel's code, so everyone who adds staff through it arrives in that channel."""

    id = models.BigAutoField(primary_key=True)
    channel = models.OneToOneField("crm.Channel", verbose_name=_("channel"),
                                   on_delete=models.CASCADE, related_name="contact_way")
    staff = models.JSONField(_("staff (WeCom UserIDs)"), default=list)
    skip_verify = models.BooleanField(_("add without verification"), default=True)
    tags = models.ManyToManyField("tagging.Tag", verbose_name=_("tags given on joining"),
                                  blank=True, related_name="+")
    welcome_message = models.TextField(_("welcome message"), blank=True)
    config_id = models.CharField(_("WeCom config id"), max_length=64, blank=True)
    qr_code_url = models.URLField(_("QR code address"), max_length=500, blank=True)
    qr_code = models.BinaryField(_("QR code image"), blank=True, default=b"")
    error = models.TextField(_("last WeCom error"), blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("channel QR code")
        verbose_name_plural = _("channel QR codes")

    def __str__(self) -> str:
        return str(self.channel)


class SyncCursor(models.Model):
    """How far a continuous push to WeCom has read (e.g. the last tag change pushed)."""

    name = models.CharField(_("name"), max_length=32, primary_key=True)
    position = models.BigIntegerField(_("position"), default=0)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("WeCom sync cursor")
        verbose_name_plural = _("WeCom sync cursors")

    def __str__(self) -> str:
        return f"{self.name}: {self.position}"


class MassSend(models.Model):
    """One WeCom mass send (群发 or 朋友圈 task) made by this system: the staff member confirms it
    in the WeCom client, then its results are polled and mapped onto the messages."""

    class Kind(models.TextChoices):
        SINGLE = "single", _("To customers")
        GROUP = "group", _("To customer groups")
        MOMENT = "moment", _("Moments")

    class Status(models.TextChoices):
        WAITING = "waiting", _("Awaiting confirmation")
        SENT = "sent", _("Sent")
        EXPIRED = "expired", _("Not confirmed in time")
        FAILED = "failed", _("Failed")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.SINGLE)
    msgid = models.CharField(_("WeCom msgid or jobid"), max_length=128, unique=True)
    sender = models.CharField(_("sender (WeCom UserID)"), max_length=64, blank=True,
                              db_index=True)
    content = models.TextField(_("content"), blank=True)
    recipients = models.PositiveIntegerField(_("recipients"), default=0)
    targets = models.JSONField(_("groups or tags"), default=list, blank=True)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices,
                              default=Status.WAITING)
    results = models.JSONField(_("results"), default=dict, blank=True)   # counts by outcome
    error = models.TextField(_("error"), blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("created by"),
                                   null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    polled_at = models.DateTimeField(_("last checked"), null=True, blank=True)

    class Meta:
        verbose_name = _("WeCom mass send")
        verbose_name_plural = _("WeCom mass sends")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "polled_at"], name="wecom_mass_open")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.msgid}"


class Reminder(models.Model):
    """A to-do (due follow-up, churn warning, alert) that reached its staff member in WeCom:
    each is sent once."""

    task = models.OneToOneField("campaigns.OperatorTask", verbose_name=_("to-do"),
                                primary_key=True, on_delete=models.CASCADE, related_name="+")
    sent_at = models.DateTimeField(_("sent at"), default=timezone.now)
    delivered = models.BooleanField(_("delivered"), default=True,
                                    help_text=_("False: WeCom did not know the staff member."))

    class Meta:
        verbose_name = _("WeCom reminder")
        verbose_name_plural = _("WeCom reminders")

    def __str__(self) -> str:
        return f"{self.task_id} {self.sent_at:%Y-%m-%d %H:%M}"
