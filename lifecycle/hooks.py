"""The transition hook: apps below lifecycle (outreach) register a handler to act when
customers enter a stage. A registry, not signals: `stage_entered` calls each handler in the
transaction that recorded the moves, so what a handler writes (an enrolment) commits or rolls
back with them."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from core.registry import Registry


@dataclass(frozen=True)
class StageEntry:
    model: str                # model key
    stage: str                # stage key entered
    at: datetime
    source: str               # rule / manual / event / system
    customer_ids: list[int]
    # Customers who had no stage in this model before: a first placement (a new customer, or
    # the first evaluation of a model over existing customers), not a move.
    first_placement: frozenset[int] = frozenset()


StageEnteredHook = Callable[[StageEntry], None]
stage_entered_hooks: Registry[StageEnteredHook] = Registry("stage_entered")


def stage_entered(entry: StageEntry) -> None:
    for hook in stage_entered_hooks:
        hook(entry)
