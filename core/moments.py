"""Dates and times that come from outside: within what the product and the database hold.

Every date or time a client sends — a body field, a list filter, a metrics range — passes
through here. An aware time is turned into UTC (PostgreSQL refuses UTC offsets beyond ±15:59,
which Python accepts up to ±23:59), and a year outside MIN_YEAR…MAX_YEAR is refused: no CRM fact
happened before 1901 (until then the time zone database keeps China on local mean time,
+08:05:43, an offset an ISO 8601 answer cannot write), and date arithmetic near Python's year
9999 overflows. Facts (events,
orders, joins, receipts) may also not lie in the future, beyond a few minutes of clock skew
(`INGEST_MAX_FUTURE_MINUTES`).
"""

from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

MIN_YEAR, MAX_YEAR = 1901, 2999


def system_tz():
    return timezone.get_default_timezone()


def local_today() -> date:
    """Today in the system time zone (TIME_ZONE): the calendar every "last N days" counts in."""
    return timezone.localdate(timezone=system_tz())


def day_start(day: date) -> datetime:
    """00:00 of `day` in the system time zone, as an aware datetime."""
    return datetime.combine(day, time.min, tzinfo=system_tz())


def last_days_start(days: int) -> datetime:
    """Where "the last `days` days" begin: 00:00 of the calendar day `days - 1` days before
    today — the same days on the home page and in the metrics (their default range)."""
    return day_start(local_today() - timedelta(days=days - 1))


class MomentError(ValueError):
    """The message says what is wrong, without the field's name (the caller adds it)."""


def _years() -> str:
    return _("must be between the years %(min)d and %(max)d") % {"min": MIN_YEAR,
                                                                  "max": MAX_YEAR}


def in_utc(moment: datetime) -> datetime:
    """An aware moment in UTC (a naive one read in the current time zone); MomentError when its
    year is out of bounds."""
    try:
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment, timezone.get_current_timezone())
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise MomentError(_years())
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise MomentError(_years())
    return moment


def check_day(day: date) -> date:
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise MomentError(_years())
    return day


def latest_allowed() -> datetime:
    return timezone.now() + timedelta(minutes=settings.INGEST_MAX_FUTURE_MINUTES)


def check_past(moment: datetime) -> datetime:
    """A fact's time: not more than INGEST_MAX_FUTURE_MINUTES ahead of now."""
    if moment > latest_allowed():
        raise MomentError(
            _("%(moment)s is in the future; times more than %(minutes)d minutes ahead are "
              "refused") % {"moment": timezone.localtime(moment).isoformat(timespec="seconds"),
                            "minutes": settings.INGEST_MAX_FUTURE_MINUTES})
    return moment
