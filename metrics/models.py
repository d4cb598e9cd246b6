"""Stored metrics: the daily snapshots (a header row per day, the day's facts at the grain
date, channel, owner), the cohort retention table, and the precomputed facts that answer any
range: stage spells and their cells (metrics.stage_durations), channel join-day cells
(metrics.channels), customer bitmaps and columns (metrics.activity). Stages are named by key,
so a day's history survives a stage being deleted. docs/METRICS.md: "Snapshots", "Cohort
retention" and the sections of those modules.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from crm.models import Channel
from lifecycle.models import StageModel


class Snapshot(models.Model):
    """A day whose facts are stored; locked while the day is (re)written."""

    date = models.DateField(_("date"), unique=True)
    taken_at = models.DateTimeField(_("taken at"))
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        verbose_name = _("metrics snapshot")
        verbose_name_plural = _("metrics snapshots")
        ordering = ["-date"]

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d}"


class DailyFact(models.Model):
    """The grain every daily fact shares: the day (system time zone) and the customers' channel
    and owner at the time the day was snapshotted."""

    date = models.DateField(_("date"))
    channel = models.ForeignKey(Channel, verbose_name=_("channel"), null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="+")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("owner"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        abstract = True


class DailyStageCount(DailyFact):
    """Customers in each stage of each model at the end of the day."""

    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="+")
    stage_key = models.CharField(_("stage"), max_length=32)
    customers = models.PositiveIntegerField(_("customers"), default=0)

    class Meta:
        verbose_name = _("daily stage count")
        verbose_name_plural = _("daily stage counts")
        indexes = [models.Index(fields=["model", "date"], name="metrics_stagecount_day")]

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d} {self.stage_key}: {self.customers}"


class DailyTransitionCount(DailyFact):
    """Stage moves made during the day; `from_key` is empty for a first placement."""

    model = models.ForeignKey(StageModel, verbose_name=_("model"), on_delete=models.CASCADE,
                              related_name="+")
    from_key = models.CharField(_("from (key)"), max_length=32, blank=True)
    to_key = models.CharField(_("to (key)"), max_length=32)
    transitions = models.PositiveIntegerField(_("transitions"), default=0)
    win_backs = models.PositiveIntegerField(_("win-backs"), default=0)

    class Meta:
        verbose_name = _("daily transition count")
        verbose_name_plural = _("daily transition counts")
        indexes = [models.Index(fields=["model", "date"], name="metrics_transcount_day")]

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d} {self.from_key or '∅'} → {self.to_key}: {self.transitions}"


class DailyActivity(DailyFact):
    """What the day's customers did (docs/METRICS.md, "Snapshots", defines each column)."""

    new_customers = models.PositiveIntegerField(_("new customers"), default=0)
    deleted_us = models.PositiveIntegerField(_("deleted us"), default=0)
    removed = models.PositiveIntegerField(_("removed by staff"), default=0)
    paid_orders = models.PositiveIntegerField(_("paid orders"), default=0)
    revenue = models.DecimalField(_("revenue (CNY)"), max_digits=16, decimal_places=2,
                                  default=0)
    refunds = models.PositiveIntegerField(_("refunds"), default=0)
    refunded_amount = models.DecimalField(_("refunded (CNY)"), max_digits=16, decimal_places=2,
                                          default=0)
    buyers = models.PositiveIntegerField(_("buyers"), default=0)
    first_time_buyers = models.PositiveIntegerField(_("first-time buyers"), default=0)
    active_customers = models.PositiveIntegerField(_("active customers"), default=0)
    referrals = models.PositiveIntegerField(_("referred customers"), default=0)
    referral_events = models.PositiveIntegerField(
        _("referral events"), null=True, blank=True,
        help_text=_("Empty on days stored before this column existed: computed live."))

    class Meta:
        verbose_name = _("daily activity")
        verbose_name_plural = _("daily activity")
        indexes = [models.Index(fields=["date"], name="metrics_activity_day")]

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d} {self.channel_id}/{self.owner_id}"


class CohortTable(models.Model):
    """The one header row of the cohort table: which months it holds, locked while rewritten."""

    through = models.DateField(_("complete months through"), null=True, blank=True,
                               help_text=_("First day of the last complete month stored."))
    refreshed_at = models.DateTimeField(_("refreshed at"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        verbose_name = _("cohort table")
        verbose_name_plural = _("cohort tables")

    def __str__(self) -> str:
        return f"cohorts through {self.through}"


class CohortCell(models.Model):
    """Of the customers who joined in `cohort` (a month, stored as its first day) with this
    channel and owner, how many were active `month_offset` months later. Complete months only;
    the current month is computed live. `customers` is the cohort's size (the same on every
    offset of a cohort); offset 0 is always written, so every cohort has a row."""

    cohort = models.DateField(_("cohort (join month)"))
    month_offset = models.PositiveSmallIntegerField(_("months since joining"))
    channel = models.ForeignKey(Channel, verbose_name=_("channel"), null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="+")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("owner"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+")
    customers = models.PositiveIntegerField(_("customers in the cohort"), default=0)
    active = models.PositiveIntegerField(_("active customers"), default=0)

    class Meta:
        verbose_name = _("cohort retention cell")
        verbose_name_plural = _("cohort retention cells")
        indexes = [models.Index(fields=["cohort", "month_offset"], name="metrics_cohort_cell")]

    def __str__(self) -> str:
        return f"{self.cohort:%Y-%m} +{self.month_offset}: {self.active}/{self.customers}"


class FactsTable(models.Model):
    """The one header row of the stage spells and the channel join-day cells: the last day
    each covers and when today's part was stored; locked while they are rewritten."""

    refreshed_at = models.DateTimeField(_("refreshed at"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)
    today_at = models.DateTimeField(_("today's changes taken at"), null=True, blank=True)
    today_ms = models.PositiveIntegerField(_("today's changes: duration (ms)"), default=0)
    spells_as_of = models.DateField(
        _("stage spells through"), null=True, blank=True,
        help_text=_("The last day whose stage spells are stored (empty before they were)."))
    channels_as_of = models.DateField(
        _("channel join-day cells through"), null=True, blank=True,
        help_text=_("The last day whose channel attribution cells are stored."))
    spells_days = models.PositiveSmallIntegerField(
        _("stage spell days"), null=True, blank=True,
        help_text=_("The spell days the stored stage spells were built for "
                    "(METRICS_SPELL_DAYS); another setting rebuilds them."))
    spells_rebuilt_on = models.DateField(
        _("stage spells last rebuilt"), null=True, blank=True,
        help_text=_("The nightly refresh updates the spells by the customers who moved, and "
                    "rebuilds them all every 30 days."))
    spells_time_zone = models.CharField(_("stage spells' time zone"), max_length=64, blank=True)
    spells_read_id = models.BigIntegerField(
        _("last stage transition read"), null=True, blank=True,
        help_text=_("The highest stage transition id when the spells were last brought up to "
                    "date: the nightly update re-reads the customers of those recorded since."))
    spells_today_on = models.DateField(
        _("today's stage spells of"), null=True, blank=True,
        help_text=_("The day today's stage spells were last stored for: the frequent refresh "
                    "then re-reads only the customers touched since (empty after the nightly "
                    "refresh, which clears them)."))
    spells_today_cells = models.PositiveIntegerField(
        _("today's stage spell cells when last summed"), default=0,
        help_text=_("Each frequent refresh adds its change to today's cells as rows of its "
                    "own; they are summed back to one row per cell once they are twice as many."))

    class Meta:
        verbose_name = _("stored facts header")
        verbose_name_plural = _("stored facts headers")

    def __str__(self) -> str:
        return f"spells through {self.spells_as_of}, channels through {self.channels_as_of}"

    def today_is_fresh(self) -> bool:
        """Whether today's part, stored by the frequent refresh, is today's and recent enough
        to use."""
        from metrics.periods import local_today, system_tz, today_max_age

        if self.today_at is None:
            return False
        return (timezone.localdate(self.today_at, timezone=system_tz()) == local_today()
                and (timezone.now() - self.today_at).total_seconds() <= today_max_age())



class SpellFields(models.Model):
    """A customer's stay in a stage of a model, from the transition into it (`spell_id`) to the
    next transition in the model (`ended_at`, `next_key`; open when there is none yet)."""

    spell_id = models.BigIntegerField(_("transition into the stage (id)"), primary_key=True)
    model_id = models.BigIntegerField(_("model id"))
    customer_id = models.BigIntegerField(_("customer id"), null=True, blank=True)
    stage_key = models.CharField(_("stage"), max_length=32)
    channel_id = models.IntegerField(_("channel id"), null=True, blank=True)
    owner_id = models.IntegerField(_("owner id"), null=True, blank=True)
    started_at = models.DateTimeField(_("entered at"))
    previous_entry_at = models.DateTimeField(
        _("previous entry into the stage"), null=True, blank=True,
        help_text=_("Only when within the spell days before today (METRICS_SPELL_DAYS); "
                    "earlier ones are not needed."))
    ended_at = models.DateTimeField(_("left at"), null=True, blank=True)
    next_key = models.CharField(_("next stage"), max_length=32, blank=True)
    exit_matches = models.BooleanField(
        _("left from this stage"), default=False,
        help_text=_("The next transition's from-stage is this stage (an exit of the stage)."))
    duration_us = models.BigIntegerField(_("duration (µs)"), null=True, blank=True)
    bucket = models.IntegerField(_("duration (whole days)"), null=True, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"spell {self.spell_id} in {self.stage_key}"


class StageSpell(SpellFields):
    """The stays the ranges need — begun or ended in the spell days before today
    (METRICS_SPELL_DAYS, default 400) — as of the nightly refresh, which replaces those of the
    customers who moved. The medians of the stages and flows reports are read from these
    (metrics.stage_durations; docs/METRICS.md, "Stage durations and channels: precomputed stage
    spells and channel cells"). An unlogged table on
    PostgreSQL (migration 0005): it needs no WAL; after a crash it is empty, the medians are
    computed live until the next nightly refresh, which then rebuilds it."""

    class Meta:
        verbose_name = _("stage spell")
        verbose_name_plural = _("stage spells")
        # The spells of one whole-day bucket of a stage (a few thousand at most): where a
        # median's exact middle values are read.
        indexes = [models.Index(fields=["model_id", "stage_key", "bucket"],
                                condition=models.Q(bucket__isnull=False),
                                name="metrics_spell_bucket"),
                   # A (channel, owner) scope's spells, counted for a range (a few thousand
                   # at 1M customers).
                   models.Index(fields=["model_id", "channel_id", "owner_id"],
                                name="metrics_spell_scope"),
                   # A customer's spells, replaced when they moved (the nightly update).
                   models.Index(fields=["customer_id"], name="metrics_spell_customer")]


class TodayStageSpell(SpellFields):
    """The stays today's transitions began or ended, as of the frequent refresh; each stands in
    for the nightly row of the same stay (`StageSpell`), if any."""

    class Meta:
        verbose_name = _("stage spell of today")
        verbose_name_plural = _("stage spells of today")


class StageSpellDayCell(models.Model):
    """For one model and stage, the stays of one aligned block of the spell days
    (`days` = 1, 4, 16, 64 or 256 from `day`) and a histogram of their durations in whole days
    ({"days": count}): exits of the stage (`kind` exit, on the day of the exit), entries into it
    (entered) and those moved on to `next_key` (next), on the day of the entry — and on their
    own day the re-entries (`reentry`, `renext`) with the day of the previous entry into the
    stage (`previous_on`), which a range subtracts when that day falls in it. At the grains
    every customer, channel and owner; the rows marked `today` are today's changes (counts may
    be negative). docs/METRICS.md, "Stage durations and channels"."""

    class Kind(models.TextChoices):
        EXIT = "exit", _("exits")
        ENTERED = "entered", _("first entries")
        NEXT = "next", _("moved on")
        REENTRY = "reentry", _("re-entries")
        RENEXT = "renext", _("re-entries moved on")

    class Grain(models.IntegerChoices):
        ALL = 0, _("every customer")
        CHANNEL = 1, _("channel")
        OWNER = 2, _("owner")
        CHANNEL_OWNER = 3, _("channel and owner")

    day = models.DateField(_("first day"))
    days = models.PositiveSmallIntegerField(_("days"), default=1)
    previous_on = models.DateField(_("day of the previous entry into the stage"), null=True,
                                   blank=True)
    today = models.BooleanField(_("today's changes"), default=False)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    model_id = models.BigIntegerField(_("model id"))
    stage_key = models.CharField(_("stage"), max_length=32)
    next_key = models.CharField(_("next stage"), max_length=32, blank=True)
    grain = models.PositiveSmallIntegerField(_("grain"), choices=Grain.choices)
    channel_id = models.IntegerField(_("channel id"), null=True, blank=True)
    owner_id = models.IntegerField(_("owner id"), null=True, blank=True)
    spells = models.IntegerField(_("stays"), default=0)
    histogram = models.JSONField(_("durations (whole days → stays)"), default=dict, blank=True)

    class Meta:
        verbose_name = _("stage spell block cell")
        verbose_name_plural = _("stage spell block cells")
        indexes = [models.Index(fields=["model_id", "grain", "days", "day"],
                                name="metrics_spellblock"),
                   models.Index(fields=["id"], condition=models.Q(today=True),
                                name="metrics_spellblock_today")]

    def __str__(self) -> str:
        return (f"{self.day}+{self.days} {self.kind} {self.stage_key}→{self.next_key}: "
                f"{self.spells}")


class JoinerFacts(models.Model):
    """Per customer who joined in the channel days before today (METRICS_CHANNEL_DAYS), what
    channel attribution needs, as
    of the nightly refresh: whether they bought since joining and how much, and whether they
    deleted us within 30 and 90 days of joining (metrics.channels; docs/METRICS.md, "Channel
    attribution")."""

    customer_id = models.BigIntegerField(_("customer id"), primary_key=True)
    channel_id = models.IntegerField(_("channel id"), null=True, blank=True)
    owner_id = models.IntegerField(_("owner id"), null=True, blank=True)
    joined_at = models.DateTimeField(_("joined at"))
    bought = models.BooleanField(_("paid order since joining"), default=False)
    revenue = models.DecimalField(_("paid since joining (CNY)"), max_digits=14,
                                  decimal_places=2, default=0)
    deleted_30d = models.BooleanField(_("deleted us within 30 days of joining"), default=False)
    deleted_90d = models.BooleanField(_("deleted us within 90 days of joining"), default=False)

    class Meta:
        verbose_name = _("joiner facts")
        verbose_name_plural = _("joiner facts")

    def __str__(self) -> str:
        return f"joiner {self.customer_id}"


class ChannelDayCell(models.Model):
    """Per join day (of the 90 days before today) and (channel, owner) as of the nightly
    refresh: the customers acquired, those who bought since joining and their revenue, and
    those who deleted us within 30 / 90 days of joining. The rows marked `today` are today's
    changes (today's joiners, and the changes of earlier joiners; may be negative)."""

    joined_on = models.DateField(_("join day"))
    today = models.BooleanField(_("today's changes"), default=False)
    channel = models.ForeignKey(Channel, verbose_name=_("channel"), null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="+")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("owner"), null=True,
                              blank=True, on_delete=models.SET_NULL, related_name="+")
    acquired = models.IntegerField(_("acquired"), default=0)
    buyers = models.IntegerField(_("buyers"), default=0)
    revenue = models.DecimalField(_("revenue (CNY)"), max_digits=16, decimal_places=2,
                                  default=0)
    deleted_30d = models.IntegerField(_("deleted us within 30 days"), default=0)
    deleted_90d = models.IntegerField(_("deleted us within 90 days"), default=0)

    class Meta:
        verbose_name = _("channel join-day cell")
        verbose_name_plural = _("channel join-day cells")
        indexes = [models.Index(fields=["joined_on"], name="metrics_channelday_day")]

    def __str__(self) -> str:
        return f"{self.joined_on:%Y-%m-%d} {self.channel_id}/{self.owner_id}: {self.acquired}"


class BitmapTable(models.Model):
    """The one header row of the customer bitmaps (`CustomerBitmap`, `CustomerColumn`): the
    days they cover, locked while they are rewritten."""

    first_day = models.DateField(_("first day stored"), null=True, blank=True)
    last_day = models.DateField(_("last day stored"), null=True, blank=True)
    read_at = models.DateTimeField(
        _("facts read at"), null=True, blank=True,
        help_text=_("When the last refresh began reading the customers and orders."))
    patch_at = models.DateTimeField(
        _("today's changed customers read at"), null=True, blank=True,
        help_text=_("When the frequent refresh began reading the customers changed today."))
    refreshed_at = models.DateTimeField(_("refreshed at"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        verbose_name = _("customer bitmap table")
        verbose_name_plural = _("customer bitmap tables")

    def __str__(self) -> str:
        return f"customer bitmaps {self.first_day} … {self.last_day}"


class CustomerBitmap(models.Model):
    """The customers of one kind (an inbound event, a paid order, a move into churn) over a
    piece of days: `days` days from `start` (1, or an aligned block of 4, 16, 64 or 256 days).
    `inbound` and `churn` are bitmaps over customer ids; `paid` lists the buyers with their
    paid orders and revenue in cents (metrics.activity)."""

    class Kind(models.TextChoices):
        INBOUND = "inbound", _("Inbound event")
        PAID = "paid", _("Paid order")
        CHURN = "churn", _("Entered churn")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    start = models.DateField(_("first day"))
    days = models.PositiveIntegerField(_("days"))
    data = models.BinaryField(_("data"))
    as_of = models.DateTimeField(_("facts read at"),
                                 help_text=_("When the orders and events were read."))

    class Meta:
        verbose_name = _("customer bitmap")
        verbose_name_plural = _("customer bitmaps")
        constraints = [models.UniqueConstraint(fields=["kind", "start", "days"],
                                               name="metrics_bitmap_piece")]

    def __str__(self) -> str:
        return f"{self.kind} {self.start:%Y-%m-%d} +{self.days}"


class CustomerColumn(models.Model):
    """One column of every customer's state, indexed by customer id (metrics.activity)."""

    name = models.CharField(_("name"), max_length=32, unique=True)
    data = models.BinaryField(_("data"))

    class Meta:
        verbose_name = _("customer column")
        verbose_name_plural = _("customer columns")

    def __str__(self) -> str:
        return self.name
