"""Channel attribution: per acquisition channel, the customers it brought in a period, what they
bought, what they cost and how many stayed (docs/METRICS.md, "Channel attribution")."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import (
    BooleanField,
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Sum,
)
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from crm.models import Channel, Customer, Event, Order
from metrics import channels
from metrics.periods import Period, Scope
from metrics.selectors import money, ratio

CENT = Decimal("0.01")
RETENTION_DAYS = channels.RETENTION_DAYS


def _deleted_us_within(days: int):
    """The customer deleted us at most `days` days after joining: a `friend_deleted` event in
    [joined_at, joined_at + days], or — for customers imported with their status — status
    `deleted_us` set in that window."""
    window_end = ExpressionWrapper(OuterRef("joined_at") + timedelta(days=days),
                                   output_field=DateTimeField())
    event = Exists(Event.objects.filter(
        customer=OuterRef("pk"), type=Event.Type.FRIEND_DELETED,
        occurred_at__gte=OuterRef("joined_at"), occurred_at__lte=window_end))
    status_end = ExpressionWrapper(F("joined_at") + timedelta(days=days),
                                   output_field=DateTimeField())
    status = Q(status=Customer.Status.DELETED_US, status_changed_at__gte=F("joined_at"),
               status_changed_at__lte=status_end)
    return ExpressionWrapper(event | status, output_field=BooleanField())


def _acquired(scope: Scope, period: Period):
    return scope.apply(Customer.objects.filter(joined_at__gte=period.since,
                                               joined_at__lt=period.until))


def _customer_rows(*, scope: Scope, period: Period, now: datetime) -> dict:
    """Per channel id: the customers acquired in the period and, per retention window, those
    whose window has elapsed and those of them who stayed."""
    figures: dict[str, Any] = {"acquired": Count("id")}
    for days in RETENTION_DAYS:
        elapsed = Q(joined_at__lte=now - timedelta(days=days))
        figures[f"eligible_{days}"] = Count("id", filter=elapsed)
        figures[f"retained_{days}"] = Count("id", filter=elapsed & Q(**{f"deleted_{days}": False}))
    return {
        row["channel"]: row for row in _acquired(scope, period).annotate(**{
            f"deleted_{days}": _deleted_us_within(days) for days in RETENTION_DAYS})
        .values("channel").annotate(**figures).order_by()}


def channel_attribution(*, scope: Scope, period: Period,
                        now: datetime | None = None) -> dict[str, Any]:
    """Per channel (and a "no channel" row) for the customers in scope who joined in the
    period: the acquired customers with their retention and their paid orders grouped by
    channel — from the join-day cells (metrics.channels) where they hold the range, unless `now`
    (a test's clock) is given — and the channels with their all-time customer count."""
    stored = channels.stored_range(period) if now is None else None
    now = now or timezone.now()
    if stored is not None:
        def boundary(day, days):
            rows = _customer_rows(scope=scope, period=Period(day, day), now=now)
            return {ch: (row[f"eligible_{days}"], row[f"retained_{days}"])
                    for ch, row in rows.items()}

        customer_rows, order_rows, to_date = channels.acquisition_counts(
            scope=scope, period=period, now=now, boundary=boundary)
    else:
        customer_rows = _customer_rows(scope=scope, period=period, now=now)
        order_rows = {
            row["customer__channel"]: row for row in Order.objects.filter(
                status=Order.Status.PAID, customer__in=_acquired(scope, period).values("pk"),
                placed_at__gte=F("customer__joined_at"))
            .values("customer__channel")
            .annotate(revenue=Sum("amount"), buyers=Count("customer", distinct=True))
            .order_by()}
        # grouped on the customers alone (an index-only count), not joined to the channels
        to_date = dict(Customer.objects.order_by().filter(channel__isnull=False)
                       .values_list("channel").annotate(n=Count("pk")))

    listed = Channel.objects.order_by("name", "code")
    if scope.channel is not None:
        listed = listed.filter(pk=scope.channel.pk)
    results = [
        _row(code=c.code, name=c.name, cost=c.cost, customers_to_date=to_date.get(c.pk, 0),
             counts=customer_rows.get(c.pk, {}), orders=order_rows.get(c.pk, {}))
        for c in listed]
    if scope.channel is None:
        # (translated when the answer is shaped: warming computes it once for every language)
        results.append(_row(code=None, name=_("No channel"), cost=None,
                            customers_to_date=None, counts=customer_rows.get(None, {}),
                            orders=order_rows.get(None, {})))
    return {"results": results, "totals": _totals(results)}


def _row(*, code: str | None, name: str, cost: Decimal | None, customers_to_date: int | None,
         counts: dict, orders: dict) -> dict[str, Any]:
    acquired = counts.get("acquired", 0)
    buyers = orders.get("buyers", 0)
    revenue = orders.get("revenue") or Decimal("0")
    per_customer = attributed = None
    if cost is not None:
        # A channel that never brought anyone has no cost per customer; its share here is 0.
        per_customer = cost / customers_to_date if customers_to_date else None
        share = cost * acquired / customers_to_date if customers_to_date else Decimal("0")
        attributed = share.quantize(CENT, rounding=ROUND_HALF_UP)
    return {
        "channel": code,
        "name": name,
        "acquired": acquired,
        "buyers": buyers,
        "conversion_rate": ratio(buyers, acquired),
        "revenue": money(revenue),
        "channel_cost": None if cost is None else money(cost),
        "customers_to_date": customers_to_date,
        "cost_per_acquisition": None if per_customer is None else money(per_customer),
        "cost": None if attributed is None else money(attributed),
        "roi": ratio(revenue - attributed, attributed) if attributed else None,
        **{f"retention_{days}d": _retention(counts.get(f"eligible_{days}", 0),
                                            counts.get(f"retained_{days}", 0))
           for days in RETENTION_DAYS},
    }


def _retention(eligible: int, retained: int) -> dict[str, Any]:
    return {"eligible": eligible, "retained": retained, "rate": ratio(retained, eligible)}


def _totals(results: list[dict]) -> dict[str, Any]:
    """All rows together; cost and ROI over the rows that have a cost."""
    acquired = sum(r["acquired"] for r in results)
    buyers = sum(r["buyers"] for r in results)
    revenue = sum((Decimal(r["revenue"]) for r in results), Decimal("0"))
    costed = [r for r in results if r["cost"] is not None]
    cost = sum((Decimal(r["cost"]) for r in costed), Decimal("0"))
    costed_revenue = sum((Decimal(r["revenue"]) for r in costed), Decimal("0"))
    totals: dict[str, Any] = {
        "acquired": acquired, "buyers": buyers, "conversion_rate": ratio(buyers, acquired),
        "revenue": money(revenue), "cost": money(cost),
        "roi": ratio(costed_revenue - cost, cost) if cost else None,
    }
    for key in (f"retention_{days}d" for days in RETENTION_DAYS):
        totals[key] = _retention(sum(r[key]["eligible"] for r in results),
                                 sum(r[key]["retained"] for r in results))
    return totals
