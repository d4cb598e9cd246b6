"""Facts about customers: who they are, where they came from, what they did and bought."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from core.models import TimeStampedModel


class Channel(TimeStampedModel):
    """An acquisition channel; `code` is the WeCom `state` of a 渠道活码 or any short key."""

    class Kind(models.TextChoices):
        QR_CODE = "qr_code", _("QR code (渠道活码)")
        STORE = "store", _("Store")
        LIVESTREAM = "livestream", _("Livestream")
        OFFICIAL_ACCOUNT = "official_account", _("Official account")
        REFERRAL = "referral", _("Referral")
        SOCIAL = "social", _("Social media")
        ADS = "ads", _("Paid ads")
        OTHER = "other", _("Other")

    code = models.CharField(_("code"), max_length=64, unique=True,
                            help_text=_("The WeCom `state` of the QR code, or any short key."))
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=32, choices=Kind.choices, default=Kind.OTHER)
    cost = models.DecimalField(_("cost (CNY)"), max_digits=14, decimal_places=2,
                               default=Decimal("0"), validators=[MinValueValidator(0)],
                               help_text=_("Spend on this channel, for ROI."))
    description = models.TextField(_("description"), blank=True)
    active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("channel")
        verbose_name_plural = _("channels")
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(cost__gte=0), name="crm_channel_cost_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Customer(TimeStampedModel):
    class Gender(models.TextChoices):
        MALE = "male", _("Male")
        FEMALE = "female", _("Female")
        UNKNOWN = "unknown", _("Unknown")

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        DELETED_US = "deleted_us", _("Deleted us")
        REMOVED = "removed", _("Removed by staff")

    external_id = models.CharField(
        _("external id"), max_length=128, unique=True,
        help_text=_("The WeCom external_userid or any external key."))
    name = models.CharField(_("name"), max_length=100, blank=True)
    phone = models.CharField(_("phone"), max_length=32, blank=True, db_index=True)
    gender = models.CharField(_("gender"), max_length=8, choices=Gender.choices,
                              default=Gender.UNKNOWN)
    city = models.CharField(_("city"), max_length=64, blank=True)
    channel = models.ForeignKey(Channel, verbose_name=_("channel"), null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="customers")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("owner"),
                              on_delete=models.PROTECT, related_name="customers")
    referred_by = models.ForeignKey("self", verbose_name=_("referred by"), null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="referrals")
    joined_at = models.DateTimeField(
        _("joined at"), default=timezone.now,
        help_text=_("When the customer entered the private domain."))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.ACTIVE)
    status_changed_at = models.DateTimeField(_("status changed at"), null=True, blank=True)
    opted_out = models.BooleanField(_("opted out"), default=False)
    attributes = models.JSONField(_("attributes"), default=dict, blank=True)

    # Aggregates, kept by the ingest services in the same transaction as the facts;
    # `customer_aggregates_refresh` recomputes them from the facts for repair.
    orders_count = models.PositiveIntegerField(_("paid orders"), default=0)
    total_spent = models.DecimalField(_("total spent (CNY)"), max_digits=14, decimal_places=2,
                                      default=Decimal("0"))
    first_order_at = models.DateTimeField(_("first order at"), null=True, blank=True)
    last_order_at = models.DateTimeField(_("last order at"), null=True, blank=True)
    last_active_at = models.DateTimeField(
        _("last active at"), null=True, blank=True,
        help_text=_("Latest inbound interaction or paid order; our own messages do not count."))

    class Meta:
        verbose_name = _("customer")
        verbose_name_plural = _("customers")
        ordering = ["-joined_at", "-id"]
        # Without it a user's exports of customer rows show phone numbers masked (core.access).
        permissions = [("export_full_phone", _("Can export full phone numbers"))]
        indexes = [
            models.Index(fields=["owner", "-joined_at"], name="crm_cust_owner_joined"),
            # The ids of an owner's or a channel's customers from the index alone (the metrics'
            # customer bitmaps mask their sets with them).
            models.Index(fields=["owner", "id"], name="crm_cust_owner_id"),
            models.Index(fields=["channel", "id"], name="crm_cust_channel_id"),
            models.Index(fields=["channel", "joined_at"], name="crm_cust_channel_joined"),
            models.Index(fields=["status", "status_changed_at"], name="crm_cust_status"),
            models.Index(fields=["joined_at"], name="crm_cust_joined"),
            models.Index(fields=["last_active_at"], name="crm_cust_last_active"),
            models.Index(fields=["referred_by"], name="crm_cust_referred_by",
                         condition=Q(referred_by__isnull=False)),
            # The metrics: first-time buyers of a day, and the referrers of a range's joiners
            # read from the index alone.
            models.Index(fields=["first_order_at"], name="crm_cust_first_order",
                         condition=Q(first_order_at__isnull=False)),
            models.Index(fields=["joined_at"], include=["referred_by", "channel", "owner"],
                         name="crm_cust_referred_joined",
                         condition=Q(referred_by__isnull=False)),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(total_spent__gte=0),
                                   name="crm_customer_total_spent_non_negative"),
            models.CheckConstraint(condition=~Q(external_id=""),
                                   name="crm_customer_external_id_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name or self.external_id


class Group(TimeStampedModel):
    """A WeCom customer group (社群 / 客户群)."""

    chat_id = models.CharField(_("external chat id"), max_length=128, unique=True)
    name = models.CharField(_("name"), max_length=100, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("group owner"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="owned_groups")
    notice = models.TextField(_("notice"), blank=True)
    members = models.ManyToManyField(Customer, through="GroupMembership", related_name="groups")

    class Meta:
        verbose_name = _("group")
        verbose_name_plural = _("groups")
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name or self.chat_id


class GroupMembership(models.Model):
    """One stay of a customer in a group; leaving closes it, re-joining opens a new one."""

    group = models.ForeignKey(Group, verbose_name=_("group"), on_delete=models.CASCADE,
                              related_name="memberships")
    customer = models.ForeignKey(Customer, verbose_name=_("customer"), on_delete=models.CASCADE,
                                 related_name="group_memberships")
    joined_at = models.DateTimeField(_("joined at"))
    left_at = models.DateTimeField(_("left at"), null=True, blank=True)

    class Meta:
        verbose_name = _("group membership")
        verbose_name_plural = _("group memberships")
        ordering = ["-joined_at"]
        indexes = [
            models.Index(fields=["customer", "group", "left_at"], name="crm_member_customer"),
            models.Index(fields=["group", "left_at"], name="crm_member_group"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["group", "customer"], condition=Q(left_at__isnull=True),
                                    name="crm_membership_one_open_per_group"),
            models.CheckConstraint(condition=Q(left_at__isnull=True)
                                   | Q(left_at__gte=models.F("joined_at")),
                                   name="crm_membership_left_after_joined"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.group_id}"


class Order(TimeStampedModel):
    class Status(models.TextChoices):
        PAID = "paid", _("Paid")
        REFUNDED = "refunded", _("Refunded")

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey(Customer, verbose_name=_("customer"), on_delete=models.CASCADE,
                                 related_name="orders")
    source = models.CharField(_("source"), max_length=32,
                              help_text=_("The shop system: youzan, weimob, store, manual, …"))
    external_id = models.CharField(_("external id"), max_length=128)
    amount = models.DecimalField(_("amount (CNY)"), max_digits=14, decimal_places=2)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.PAID)
    placed_at = models.DateTimeField(_("placed at"))
    refunded_at = models.DateTimeField(_("refunded at"), null=True, blank=True)

    class Meta:
        verbose_name = _("order")
        verbose_name_plural = _("orders")
        ordering = ["-placed_at", "-id"]
        indexes = [
            models.Index(fields=["customer", "status", "placed_at"], name="crm_order_customer"),
            models.Index(fields=["placed_at"], name="crm_order_placed"),
            # The metrics: a day's refunds.
            models.Index(fields=["refunded_at"], name="crm_order_refunded",
                         condition=Q(refunded_at__isnull=False)),
            # The metrics' customer bitmaps: orders recorded or changed (a refund) since a
            # day's buyers were read.
            models.Index(fields=["updated_at"], name="crm_order_updated"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["source", "external_id"],
                                    name="crm_order_unique_per_source"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="crm_order_amount_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.source}:{self.external_id}"


class OrderItem(models.Model):
    id = models.BigAutoField(primary_key=True)
    order = models.ForeignKey(Order, verbose_name=_("order"), on_delete=models.CASCADE,
                              related_name="items")
    sku = models.CharField(_("SKU"), max_length=64, blank=True)
    name = models.CharField(_("name"), max_length=200, blank=True)
    category = models.CharField(_("category"), max_length=64, blank=True)
    quantity = models.PositiveIntegerField(_("quantity"), default=1)
    price = models.DecimalField(_("price (CNY)"), max_digits=14, decimal_places=2,
                                default=Decimal("0"))

    class Meta:
        verbose_name = _("order item")
        verbose_name_plural = _("order items")
        indexes = [models.Index(fields=["category", "order"], name="crm_item_category")]

    def __str__(self) -> str:
        return self.name or self.sku


class Event(models.Model):
    """Something a customer did or that happened to them, at its own time (`occurred_at`)."""

    class Type(models.TextChoices):
        FRIEND_ADDED = "friend_added", _("Added as a friend")
        FRIEND_DELETED = "friend_deleted", _("Deleted or blocked us")
        FRIEND_REMOVED = "friend_removed", _("Removed by staff")
        MESSAGE_IN = "message_in", _("Message from the customer")
        MESSAGE_OUT = "message_out", _("Message to the customer")
        GROUP_JOINED = "group_joined", _("Joined a group")
        GROUP_LEFT = "group_left", _("Left a group")
        MOMENTS_INTERACTION = "moments_interaction", _("Moments like or comment")
        LINK_CLICKED = "link_clicked", _("Clicked a link")
        COUPON_REDEEMED = "coupon_redeemed", _("Redeemed a coupon")
        SURVEY_ANSWERED = "survey_answered", _("Answered a survey")
        REFERRAL = "referral", _("Referred a customer")
        OPTED_OUT = "opted_out", _("Opted out")
        MESSAGE_DELIVERED = "message_delivered", _("Our message was delivered")
        MESSAGE_READ = "message_read", _("Our message was read")

    id = models.BigAutoField(primary_key=True)
    # (customer, type, occurred_at) serves the customer's timeline and per-customer counts; the
    # covering (type, occurred_at) INCLUDE (customer) serves "who did X in the last N days"
    # from the index alone (segment previews, tag rules, metrics).
    customer = models.ForeignKey(Customer, verbose_name=_("customer"), on_delete=models.CASCADE,
                                 related_name="events", db_index=False)
    type = models.CharField(_("type"), max_length=32, choices=Type.choices)
    occurred_at = models.DateTimeField(_("occurred at"))
    # Unique by a constraint, not `unique=True`: on PostgreSQL the field option also builds a
    # second, `varchar_pattern_ops` index for LIKE, which nothing asks of a key (7 s of
    # `seed_demo` at 1M, and one more index entry per ingested event).
    idempotency_key = models.CharField(_("idempotency key"), max_length=200)
    data = models.JSONField(_("data"), default=dict, blank=True)
    received_at = models.DateTimeField(_("received at"), default=timezone.now)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["customer", "type", "occurred_at"], name="crm_event_customer"),
            models.Index(fields=["type", "occurred_at"], include=["customer"],
                         name="crm_event_type_customer"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="crm_event_idempotency_once"),
        ]

    def __str__(self) -> str:
        return f"{self.type} @ {self.occurred_at:%Y-%m-%d %H:%M}"


EVENT_COUNT_LATEST = 5
LATEST_FIELDS = tuple(f"latest_{k}" for k in range(1, EVENT_COUNT_LATEST + 1))


class EventCount(models.Model):
    """How many events of a type a customer has: in all, and since joining (at or after
    `joined_at`). `events_ingest` adds the events it stores in their own transaction;
    `event_counts_refresh` recomputes from the events (the nightly repair, `seed_demo`, a
    changed joining date). Conditions on a whole history or "since joining" read these rows
    instead of aggregating the events (docs/PERFORMANCE.md)."""

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey(Customer, verbose_name=_("customer"), on_delete=models.CASCADE,
                                 related_name="event_counts", db_index=False,
                                 db_constraint=False)
    type = models.CharField(_("type"), max_length=32, choices=Event.Type.choices)
    total = models.PositiveIntegerField(_("events"), default=0)
    since_joined = models.PositiveIntegerField(_("events since joining"), default=0)
    # When the latest EVENT_COUNT_LATEST events of the type happened, newest first (None past
    # the total): "at least k events within N days" (k ≤ 5) is then "the k-th latest is within
    # N days" — one index range instead of counting the window's events.
    latest_1 = models.DateTimeField(_("latest event"), null=True, blank=True)
    latest_2 = models.DateTimeField(_("2nd latest event"), null=True, blank=True)
    latest_3 = models.DateTimeField(_("3rd latest event"), null=True, blank=True)
    latest_4 = models.DateTimeField(_("4th latest event"), null=True, blank=True)
    latest_5 = models.DateTimeField(_("5th latest event"), null=True, blank=True)

    class Meta:
        verbose_name = _("event count")
        verbose_name_plural = _("event counts")
        constraints = [models.UniqueConstraint(fields=["customer", "type"],
                                               name="crm_eventcount_once")]
        indexes = [models.Index(fields=["type", "customer"], include=["total", "since_joined"],
                                name="crm_eventcount_type"),
                   models.Index(fields=["type", "latest_1"],
                                include=["customer", "latest_2", "latest_3", "latest_4",
                                         "latest_5"], name="crm_eventcount_latest")]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.type}: {self.total} ({self.since_joined})"


# Events that show the customer is engaged: they move `last_active_at` (DESIGN §4).
INBOUND_EVENT_TYPES = frozenset({
    Event.Type.MESSAGE_IN, Event.Type.GROUP_JOINED, Event.Type.MOMENTS_INTERACTION,
    Event.Type.LINK_CLICKED, Event.Type.COUPON_REDEEMED, Event.Type.SURVEY_ANSWERED,
    Event.Type.REFERRAL,
})
# Events that change the relationship status, and the status each one leads to.
STATUS_EVENT_TYPES = {
    Event.Type.FRIEND_ADDED: Customer.Status.ACTIVE,
    Event.Type.FRIEND_DELETED: Customer.Status.DELETED_US,
    Event.Type.FRIEND_REMOVED: Customer.Status.REMOVED,
}


class CustomerNote(models.Model):
    """What an operator wrote down about a customer (a call, a preference, a promise); shown in
    the customer's timeline, exported with their data."""

    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey(Customer, verbose_name=_("customer"), on_delete=models.CASCADE,
                                 related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("author"), null=True,
                               on_delete=models.SET_NULL, related_name="+")
    text = models.TextField(_("text"))
    created_at = models.DateTimeField(_("written at"), default=timezone.now)

    class Meta:
        verbose_name = _("note")
        verbose_name_plural = _("notes")
        indexes = [models.Index(fields=["customer", "-created_at"], name="crm_note_customer")]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.text[:40]}"


class CustomerTouch(models.Model):
    """A customer whose facts changed, written in the statement that changed them: one row per
    customer and statement, read by every consumer (tag rules, lifecycle, the segment index),
    each from where it stands (crm.hooks)."""

    id = models.BigAutoField(primary_key=True)
    customer_id = models.BigIntegerField(_("customer id"))
    # PostgreSQL: the id of the writing transaction (pg_current_xact_id), which consumers test
    # against their last snapshot; empty elsewhere, where the row id orders the touches.
    txid = models.BigIntegerField(_("transaction"), null=True, blank=True)
    # The consumer that wrote the rows itself and needs no word of it ('' for none).
    origin = models.CharField(_("written by"), max_length=64, blank=True, default="")
    at = models.DateTimeField(_("at"), default=timezone.now)

    class Meta:
        verbose_name = _("customer touch")
        verbose_name_plural = _("customer touches")
        indexes = [models.Index(fields=["txid"], name="crm_touch_txid")]

    def __str__(self) -> str:
        return f"{self.customer_id} @ {self.at:%Y-%m-%d %H:%M:%S}"


class TouchConsumer(models.Model):
    """One consumer of the touches: where it stands, and the lock that keeps two workers from
    processing its touches at once."""

    consumer = models.CharField(_("consumer"), max_length=64, primary_key=True)
    # PostgreSQL: the snapshot (pg_snapshot) of its last run — it has read every touch whose
    # transaction that snapshot sees — then that run's transaction id and last own touch
    # (crm.hooks._since); elsewhere the last touch id read. Empty: from the start.
    position = models.TextField(_("position"), blank=True, default="")
    updated_at = models.DateTimeField(_("last run"), auto_now=True)

    class Meta:
        verbose_name = _("touch consumer")
        verbose_name_plural = _("touch consumers")

    def __str__(self) -> str:
        return self.consumer


class CustomerImport(TimeStampedModel):
    """A CSV file of customers imported in the background, chunk by chunk, with its progress
    and the rows it rejected (crm.services.customer_import_start / customer_import_run).

    The file is kept in the row (a BinaryField) rather than under a media directory: the web
    server and the worker then need no shared disk, the file and its job are written in one
    transaction, and it works alike on SQLite and PostgreSQL.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("uploaded by"),
                              on_delete=models.CASCADE, related_name="+")
    name = models.CharField(_("file name"), max_length=255)
    content = models.BinaryField(_("file content"))
    columns = models.JSONField(_("columns"), default=list, blank=True)   # the header row
    language = models.CharField(_("language"), max_length=16, blank=True,
                                help_text=_("The uploader's language, for the row messages."))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    total_rows = models.PositiveIntegerField(_("rows"), default=0)
    # The rows handled so far, and so the cursor: the next chunk starts at this data row
    # (0-based). It is committed with each chunk's customers, so no chunk counts twice.
    next_row = models.PositiveIntegerField(_("rows processed"), default=0)
    accepted = models.PositiveIntegerField(_("accepted"), default=0)
    created = models.PositiveIntegerField(_("created"), default=0)
    updated = models.PositiveIntegerField(_("updated"), default=0)
    duplicates = models.PositiveIntegerField(_("duplicates"), default=0)
    rejected = models.PositiveIntegerField(_("rejected"), default=0)
    # [{"row": line number (the header is line 1), "message": …, "values": [cells]}], the first
    # services.IMPORT_ERRORS_KEPT of them; `rejected` counts them all.
    rejected_rows = models.JSONField(_("rejected rows"), default=list, blank=True)
    error = models.TextField(_("error"), blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer import")
        verbose_name_plural = _("customer imports")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["actor", "-created_at"], name="crm_import_actor"),
            models.Index(fields=["status", "updated_at"], name="crm_import_status"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return min(100, self.next_row * 100 // self.total_rows) if self.total_rows else 0


class CustomerExport(TimeStampedModel):
    """A CSV export of the customer list too large to stream in the request: written in the
    background, chunk by chunk, to a file under DATA_DIR/exports, downloadable when done.
    `bytes_written` and `last_customer_id` are committed together after each chunk, so a
    resumed export cuts the file back to what was committed and carries on from there."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("by"),
                              on_delete=models.CASCADE, related_name="+")
    condition = models.JSONField(_("condition"), null=True, blank=True)
    customer_ids = models.JSONField(_("customer ids"), null=True, blank=True)
    language = models.CharField(_("language"), max_length=16, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices,
                              default=Status.QUEUED)
    total = models.PositiveIntegerField(_("customers"), default=0)
    processed = models.PositiveIntegerField(_("processed"), default=0)
    last_customer_id = models.BigIntegerField(_("resume after customer id"), default=0)
    bytes_written = models.BigIntegerField(_("bytes written"), default=0)
    error = models.TextField(_("error"), blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer export")
        verbose_name_plural = _("customer exports")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "updated_at"], name="crm_export_status")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.status}"

    @property
    def file_name(self) -> str:
        return f"customers-{self.pk}.csv"


class ErasedIdentity(models.Model):
    """A customer erased on request (PIPL): the hash of their external id and when, so a
    later import or sync does not bring them back; a `friend_added` after the erasure (they
    added the brand again) does, and removes this row."""

    external_id_hash = models.CharField(_("external id (SHA-256)"), max_length=64,
                                        primary_key=True)
    erased_at = models.DateTimeField(_("erased at"))

    class Meta:
        verbose_name = _("erased identity")
        verbose_name_plural = _("erased identities")

    def __str__(self) -> str:
        return f"{self.external_id_hash[:12]}… {self.erased_at:%Y-%m-%d}"
