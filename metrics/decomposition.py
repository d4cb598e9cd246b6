"""Seed 004's identity, revenue = traffic × conversion rate × average order value × purchase
frequency, and the split of a revenue change between two periods into the four factors: LMDI
when all eight factor values are positive, else the exact Shapley split, rounded to the cent
so that the parts add up to the change (docs/METRICS.md, "Revenue (seed 004)")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import permutations

CENT = Decimal("0.01")
FACTORS = ("traffic", "conversion_rate", "average_order_value", "purchase_frequency")


def _share(part, whole) -> Fraction:
    return Fraction(part) / whole if whole else Fraction(0)


@dataclass(frozen=True)
class Factors:
    traffic: int
    buyers: int
    paid_orders: int
    revenue: Decimal

    @property
    def conversion_rate(self) -> Fraction:
        return _share(self.buyers, self.traffic)

    @property
    def average_order_value(self) -> Fraction:
        return _share(self.revenue, self.paid_orders)

    @property
    def purchase_frequency(self) -> Fraction:
        return _share(self.paid_orders, self.buyers)

    def values(self) -> tuple[Fraction, Fraction, Fraction, Fraction]:
        return (Fraction(self.traffic), self.conversion_rate, self.average_order_value,
                self.purchase_frequency)


def lmdi(current: Factors, previous: Factors) -> list[float]:
    a, b = float(current.revenue), float(previous.revenue)
    weight = a if a == b else (a - b) / (math.log(a) - math.log(b))    # the logarithmic mean
    return [weight * math.log(float(x1) / float(x0))
            for x1, x0 in zip(current.values(), previous.values(), strict=True)]


def shapley(current: Factors, previous: Factors) -> list[Fraction]:
    """Exact (rational) Shapley values of the product's change: each factor's change in value,
    averaged over every order of changing the factors from `previous` to `current`."""
    new, old = current.values(), previous.values()
    orders = list(permutations(range(len(new))))
    parts = [Fraction(0)] * len(new)
    for order in orders:
        values = list(old)
        for i in order:
            before = math.prod(values)
            values[i] = new[i]
            parts[i] += math.prod(values) - before
    return [part / len(orders) for part in parts]


def decompose(*, current: Factors, previous: Factors) -> tuple[str, dict[str, Decimal]]:
    """(method, {factor: part in CNY, to the cent}); the parts add up exactly to the change."""
    positive = all(v > 0 for v in (*current.values(), *previous.values()))
    raw = lmdi(current, previous) if positive else shapley(current, previous)
    parts = [(Decimal(v.numerator) / Decimal(v.denominator) if isinstance(v, Fraction)
              else Decimal(repr(v))).quantize(CENT, rounding=ROUND_HALF_UP) for v in raw]
    change = (Decimal(current.revenue) - Decimal(previous.revenue)).quantize(CENT)
    remainder = change - sum(parts, Decimal("0"))
    if remainder:
        largest = max(range(len(parts)), key=lambda i: abs(parts[i]))
        parts[largest] += remainder
    return ("lmdi" if positive else "shapley"), dict(zip(FACTORS, parts, strict=True))
