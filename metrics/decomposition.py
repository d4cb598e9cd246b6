"""Seed 004's identity, revenue = traffic × conversion rate × average order value × purchase
frequency, and the split of a revenue change between two periods into the four factors: LMDI
when all eight factor values are positive, else the Shapley split (exact with zeros), rounded
to the cent so that the parts add up to the change. Formulas: docs/METRICS.md, "Revenue
(seed 004)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import combinations

CENT = Decimal("0.01")
FACTORS = ("traffic", "conversion_rate", "average_order_value", "purchase_frequency")


@dataclass(frozen=True)
class Factors:
    traffic: int
    buyers: int
    paid_orders: int
    revenue: Decimal

    @property
    def conversion_rate(self) -> Fraction:
        return Fraction(self.buyers, self.traffic) if self.traffic else Fraction(0)

    @property
    def average_order_value(self) -> Fraction:
        if not self.paid_orders:
            return Fraction(0)
        return Fraction(self.revenue) / self.paid_orders

    @property
    def purchase_frequency(self) -> Fraction:
        return Fraction(self.paid_orders, self.buyers) if self.buyers else Fraction(0)

    def values(self) -> tuple[Fraction, Fraction, Fraction, Fraction]:
        return (Fraction(self.traffic), self.conversion_rate, self.average_order_value,
                self.purchase_frequency)


def _log_mean(a: float, b: float) -> float:
    if a == b:
        return a
    return (a - b) / (math.log(a) - math.log(b))


def lmdi(current: Factors, previous: Factors) -> list[float]:
    weight = _log_mean(float(current.revenue), float(previous.revenue))
    return [weight * math.log(float(x1) / float(x0))
            for x1, x0 in zip(current.values(), previous.values(), strict=True)]


def shapley(current: Factors, previous: Factors) -> list[Fraction]:
    """Exact (rational) Shapley values of the product's change."""
    new, old = current.values(), previous.values()
    n = len(new)

    def value(changed: frozenset[int]) -> Fraction:
        product = Fraction(1)
        for i in range(n):
            product *= new[i] if i in changed else old[i]
        return product

    parts = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = Fraction(0)
        for size in range(n):
            weight = Fraction(math.factorial(size) * math.factorial(n - size - 1),
                              math.factorial(n))
            for subset in combinations(others, size):
                changed = frozenset(subset)
                total += weight * (value(changed | {i}) - value(changed))
        parts.append(total)
    return parts


def _to_decimal(value: float | Fraction) -> Decimal:
    if isinstance(value, Fraction):
        return Decimal(value.numerator) / Decimal(value.denominator)
    return Decimal(repr(value))


def decompose(*, current: Factors, previous: Factors) -> tuple[str, dict[str, Decimal]]:
    """(method, {factor: part in CNY, to the cent}); the parts add up exactly to the change."""
    positive = all(v > 0 for v in (*current.values(), *previous.values()))
    method = "lmdi" if positive else "shapley"
    raw = lmdi(current, previous) if positive else shapley(current, previous)
    parts = [_to_decimal(v).quantize(CENT, rounding=ROUND_HALF_UP) for v in raw]
    change = (Decimal(current.revenue) - Decimal(previous.revenue)).quantize(CENT)
    remainder = change - sum(parts, Decimal("0"))
    if remainder:
        largest = max(range(len(parts)), key=lambda i: abs(parts[i]))
        parts[largest] += remainder
    return method, dict(zip(FACTORS, parts, strict=True))
