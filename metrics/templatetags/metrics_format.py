"""Number formats of the Metrics page: rates as percentages with one decimal, money as ¥ with
thousands separators, counts grouped; "—" where the API answers null (nothing to count)."""

from decimal import Decimal, InvalidOperation

from django import template
from django.utils.formats import number_format

register = template.Library()

DASH = "—"
MINUS = "−"


def _decimal(value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _grouped(value: Decimal, places: int) -> str:
    return number_format(value, places, use_l10n=True, force_grouping=True)


@register.filter
def percent(value) -> str:
    """0.1234 → "12.3%"."""
    number = _decimal(value)
    return DASH if number is None else f"{_grouped(number * 100, 1)}%"


@register.filter
def signed_pp(value) -> str:
    """Percentage points with a sign: 4.25 → "+4.3 pp"."""
    number = _decimal(value)
    if number is None:
        return DASH
    sign = "+" if number > 0 else MINUS if number < 0 else ""
    return f"{sign}{_grouped(abs(number), 1)} pp"


@register.filter
def money(value) -> str:
    """"1234.5" → "¥1,234.50"."""
    number = _decimal(value)
    if number is None:
        return DASH
    return f"{MINUS if number < 0 else ''}¥{_grouped(abs(number), 2)}"


@register.filter
def signed_money(value) -> str:
    """A change: "+¥1,234.50", "−¥80.00", "¥0.00"."""
    number = _decimal(value)
    if number is None:
        return DASH
    sign = "+" if number > 0 else MINUS if number < 0 else ""
    return f"{sign}¥{_grouped(abs(number), 2)}"


@register.filter
def count(value) -> str:
    """12345 → "12,345"."""
    number = _decimal(value)
    return DASH if number is None else _grouped(number, 0)


@register.filter
def decimal2(value) -> str:
    """A ratio that is not a share (purchase frequency): 1.5 → "1.50"."""
    number = _decimal(value)
    return DASH if number is None else _grouped(number, 2)


@register.filter
def multiplier(value) -> str:
    """The fission multiplier: 2.0 → "2.00×"."""
    number = _decimal(value)
    return DASH if number is None else f"{_grouped(number, 2)}×"
