"""Stored metrics: one header row per snapshotted day, the day's facts at the grain
(date, channel, owner), and the cohort retention table of complete months.

The facts name stages by key (like `StageTransition.from_key`/`to_key`), so a day's history
survives a stage being deleted later.
"""

from django.conf import settings
from django.db import models
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
