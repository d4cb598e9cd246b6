"""Days, date ranges and who is counted, the ground rules every metric shares (docs/METRICS.md,
"Ground rules"): a day is a calendar day of `settings.TIME_ZONE`, a range includes both its
ends, a `Scope` is the customers the user may see narrowed by the channel and owner filters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from core import access
from core.moments import day_start, local_today, system_tz  # noqa: F401 (the metrics' names)
from crm.models import Channel, Customer

MAX_RANGE_DAYS = 366
# The last 7, 30 and 90 days: the dashboard's ranges, the least history a stored structure keeps.
STANDARD_DAYS = (7, 30, 90)
SEES_ALL = (access.ADMIN, access.ANALYST)


def stored_days(setting: str) -> int:
    """Days up to today a stored structure keeps (a setting, default 400, at least 90)."""
    return max(int(getattr(settings, setting, 400)), max(STANDARD_DAYS))


def today_max_age() -> int:
    """Seconds the stored part of today stands in for a live computation."""
    return int(getattr(settings, "METRICS_TODAY_MAX_AGE_SECONDS", 600))


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, second: date) -> int:
    """Whole calendar months from `first`'s month to `second`'s month."""
    return (second.year - first.year) * 12 + second.month - first.month


def as_date(value: Any) -> date:
    """A date from what a raw query answers: a date, a datetime or ISO text (SQLite)."""
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class Period:
    """The days `start` … `end`, both included."""

    start: date
    end: date

    @property
    def since(self) -> datetime:
        return day_start(self.start)

    @property
    def until(self) -> datetime:
        """The first instant after the period (exclusive bound)."""
        return day_start(self.end + timedelta(days=1))

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> Period:
        """The period of equal length that ends the day before this one starts."""
        return Period(self.start - timedelta(days=self.days), self.start - timedelta(days=1))

    def each_day(self) -> Iterator[date]:
        return (self.start + timedelta(days=offset) for offset in range(self.days))

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def in_domain(period: Period, path: str = "") -> Q:
    """Customers in the private domain during the period: joined by its end and not gone
    (deleted us or removed) before its start."""
    return Q(**{f"{path}joined_at__lt": period.until}) & (
        Q(**{f"{path}status": Customer.Status.ACTIVE})
        | Q(**{f"{path}status_changed_at__gte": period.since}))


@dataclass(frozen=True)
class Scope:
    """The customers a metric counts. `user=None` is every customer (the nightly snapshot)."""

    user: Any = None
    channel: Channel | None = None
    owner: Any = None

    def apply(self, queryset: QuerySet, path: str = "") -> QuerySet:
        """Restrict rows reached from customers (`path` e.g. `"customer__"`; the snapshot tables
        carry `channel` and `owner` themselves, path `""`)."""
        if self.user is not None and access.user_role(self.user) != access.ANALYST:
            queryset = access.scope_customers(queryset, self.user, owner_field=f"{path}owner")
        if self.channel is not None:
            queryset = queryset.filter(**{f"{path}channel": self.channel})
        if self.owner is not None:
            queryset = queryset.filter(**{f"{path}owner": self.owner})
        return queryset

    @property
    def _role(self) -> str | None:
        return access.ADMIN if self.user is None else access.user_role(self.user)

    def cell(self) -> tuple[int | None, int | None] | None:
        """The (channel id, owner id) a stored cell must carry to be in the scope, None for
        "any" (the rule of `apply`); None when the scope holds nobody."""
        role = self._role
        channel = self.channel.pk if self.channel is not None else None
        owner = self.owner.pk if self.owner is not None else None
        if role == access.OPERATOR:
            if owner not in (None, self.user.pk):
                return None
            owner = self.user.pk
        elif role not in SEES_ALL:
            return None
        return channel, owner

    def holds(self, channel_id: int | None, owner_id: int | None) -> bool:
        """Whether a stored (channel, owner) cell belongs to the scope."""
        cell = self.cell()
        return cell is not None and cell[0] in (None, channel_id) and cell[1] in (None, owner_id)

    @property
    def restricted(self) -> bool:
        return self.channel is not None or self.owner is not None or self._role not in SEES_ALL

    @property
    def key(self) -> str:
        """What the answer depends on, for cache keys (admins and analysts share one)."""
        role = self._role
        who = "all" if role in SEES_ALL else f"u{self.user.pk}:{role}"
        return (f"{who}:c{self.channel.pk if self.channel else '-'}"
                f":o{self.owner.pk if self.owner else '-'}")
