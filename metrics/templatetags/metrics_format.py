"""Number formats of the Metrics page: rates as percentages with one decimal, money as ¥ with
thousands separators, counts grouped; "—" where the API answers null (nothing to count)."""

from decimal import Decimal, InvalidOperation
from functools import wraps

from django import template
from django.utils.formats import number_format

register = template.Library()

DASH = "—"
MINUS = "−"


def _grouped(value: Decimal, places: int) -> str:
    return number_format(value, places, use_l10n=True, force_grouping=True)


def _sign(number: Decimal) -> str:
    return "+" if number > 0 else MINUS if number < 0 else ""


def number_filter(format_number):
    """A filter formatting a number (given as a number or text), "—" for none."""
    @wraps(format_number)
    def format_value(value) -> str:
        try:
            number = None if value is None or value == "" else Decimal(str(value))
        except InvalidOperation:
            number = None
        return DASH if number is None else format_number(number)

    return register.filter(format_number.__name__, format_value)


@number_filter
def percent(number: Decimal) -> str:
    """0.1234 → "12.3%"."""
    return f"{_grouped(number * 100, 1)}%"


@number_filter
def signed_pp(number: Decimal) -> str:
    """Percentage points with a sign: 4.25 → "+4.3 pp"."""
    return f"{_sign(number)}{_grouped(abs(number), 1)} pp"


@number_filter
def money(number: Decimal) -> str:
    """"1234.5" → "¥1,234.50"."""
    return f"{MINUS if number < 0 else ''}¥{_grouped(abs(number), 2)}"


@number_filter
def signed_money(number: Decimal) -> str:
    """A change: "+¥1,234.50", "−¥80.00", "¥0.00"."""
    return f"{_sign(number)}¥{_grouped(abs(number), 2)}"


@number_filter
def count(number: Decimal) -> str:
    """12345 → "12,345"."""
    return _grouped(number, 0)


@number_filter
def decimal2(number: Decimal) -> str:
    """A ratio that is not a share (purchase frequency): 1.5 → "1.50"."""
    return _grouped(number, 2)


@number_filter
def multiplier(number: Decimal) -> str:
    """The fission multiplier: 2.0 → "2.00×"."""
    return f"{_grouped(number, 2)}×"
