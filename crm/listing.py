"""Extension points of the dashboard's customer list that lower apps fill: saved segments to
filter by, counters that answer "how many match" without a pass over every customer, and the
bulk actions (tags, stages) run on a selection or on everything a filter matches.

crm knows none of these apps; they register here from their own code, so crm never imports
them (DESIGN §3: an app imports only from the apps above it).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.registry import Registry


@dataclass(frozen=True)
class SegmentSource:
    """Saved segments: `choices()` → [(id, name)], `condition(id)` → its condition or None."""

    choices: Callable[[], list[tuple[int, str]]]
    condition: Callable[[int], Any]


@dataclass(frozen=True)
class CountAnswer:
    count: int
    as_of: datetime


# (user, condition) → a count as of some moment, or None when the counter cannot answer it.
CustomerCounter = Callable[..., CountAnswer | None]


@dataclass(frozen=True)
class BulkStarted:
    """What starting a bulk action did: finished at once (`done`, with `summary`), or a
    background job (`job_id`) whose progress `BulkAction.progress` reports."""

    job_id: int
    done: bool
    summary: str = ""


@dataclass(frozen=True)
class BulkProgress:
    status: str               # queued / running / done / failed
    status_label: str
    total: int
    processed: int
    summary: str              # what it did so far, in a sentence
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def percent(self) -> int:
        if self.status == "done":
            return 100
        return min(100, self.processed * 100 // self.total) if self.total else 0


@dataclass(frozen=True)
class BulkAction:
    """`start(actor=, customers=, condition=, customer_ids=, params=)`: customers is the
    scoped queryset of the set (ids or condition applied), `params` the action's own plain
    values; raises ApplicationError for what it refuses. `progress(user=, job_id=)` → a
    BulkProgress, or None for a job that is not the user's (admins see every job)."""

    start: Callable[..., BulkStarted]
    progress: Callable[..., BulkProgress | None]


# (part name, summary(arrays, visible customers), user=) → (summary's answer, as of) or None:
# a summary over a part of the segment index (tagging), such as lifecycle's stages.
IndexSummary = Callable[..., tuple[Any, datetime] | None]

segment_sources: Registry[SegmentSource] = Registry("segment_sources")
index_summaries: Registry[IndexSummary] = Registry("index_summaries")
customer_counters: Registry[CustomerCounter] = Registry("customer_counters")
bulk_actions: Registry[BulkAction] = Registry("bulk_actions")
