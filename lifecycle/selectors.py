"""Reads of the lifecycle pages: models with their stage counts, a model's board (counts and
the newest arrivals of each stage), a column's page of cards and the transition log — each
scoped to the user and costing a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from core import access
from crm import selectors as crm_selectors
from crm.models import Customer
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition

BOARD_CARDS = 20        # cards per column on the board and per "more" page
LOG_PAGE_SIZE = 50


def _places(user) -> QuerySet[CustomerStage]:
    """The customers' places the user counts: operators their own customers, admins and
    analysts (figures only) everyone."""
    places = CustomerStage.objects.all()
    if access.user_role(user) == access.OPERATOR:
        places = places.filter(customer__owner=user)
    return places


def _index_stage_counts(part: dict, visible) -> dict[tuple[int, int], int]:
    """(model id, stage id) → customers, from the segment index's `stages` part."""
    import numpy as np

    counts = {}
    for name, column in part.items():
        model_id = int(name.split(":", 1)[1])
        placed = column[visible & (column > 0)]
        for stage_id, n in zip(*np.unique(placed, return_counts=True), strict=True):
            counts[(model_id, int(stage_id))] = int(n)
    return counts


def stage_counts(*, user, model: StageModel | None = None
                 ) -> tuple[dict[tuple[int, int], int], datetime | None]:
    """(model id, stage id) → how many of the customers the user counts are there, and as
    of when: from the segment index when it is recent (a GROUP BY over every customer's
    place is 0.35 s per model at a million customers), else counted now (as of None)."""
    from crm import listing

    for summarize in listing.index_summaries:
        answer = summarize("stages", _index_stage_counts, user=user)
        if answer is not None:
            counts, as_of = answer
            if model is not None:
                counts = {key: n for key, n in counts.items() if key[0] == model.pk}
            return counts, as_of
    places = _places(user)
    if model is not None:
        places = places.filter(model=model)
    return ({(m, s): n for m, s, n in places.values_list("model_id", "stage_id")
             .annotate(n=Count("id")).values_list("model_id", "stage_id", "n")}, None)


def stage_models_overview(*, user) -> list[StageModel]:
    """Every model with its stages in position order; each stage carries `count` and each
    model `total` and `as_of` (`stage_counts`: one answer for all of them)."""
    models = list(StageModel.objects.order_by("order", "key").prefetch_related(
        Prefetch("stages", queryset=Stage.objects.order_by("position"))))
    counts, as_of = stage_counts(user=user)
    for model in models:
        model.stage_list = list(model.stages.all())
        for stage in model.stage_list:
            stage.count = counts.get((model.pk, stage.pk), 0)
        model.total = sum(s.count for s in model.stage_list)
        model.counts_as_of = as_of
    return models


def stage_model_get(*, key: str) -> StageModel:
    from django.shortcuts import get_object_or_404

    return get_object_or_404(StageModel, key=key)


def model_stages(*, model: StageModel) -> list[Stage]:
    return list(model.stages.order_by("position"))


@dataclass
class Column:
    stage: Stage
    count: int
    cards: list[CustomerStage] = field(default_factory=list)

    @property
    def has_more(self) -> bool:
        return len(self.cards) < self.count


def _cards(user, model: StageModel, stage: Stage, *, offset: int, limit: int,
           now: datetime) -> list[CustomerStage]:
    places = access.scope_customers(
        CustomerStage.objects.filter(model=model, stage=stage), user,
        owner_field="customer__owner")
    cards = list(places.select_related("customer", "customer__owner")
                 .order_by("-entered_at", "-id")[offset:offset + limit])
    for card in cards:
        card.days = max(0, (now - card.entered_at).days)
        card.locked = bool(card.locked_until and card.locked_until > now)
    return cards


def stage_board(*, user, model: StageModel, with_cards: bool) -> list[Column]:
    """The board's columns: each stage with its count (one aggregate query) and, when the
    user may see customers, its newest arrivals (one query per column: stages are few)."""
    stages = model_stages(model=model)
    by_place, as_of = stage_counts(user=user, model=model)
    counts = {stage_id: n for (_model, stage_id), n in by_place.items()}
    model.counts_as_of = as_of
    now = timezone.now()
    columns = [Column(stage=s, count=counts.get(s.pk, 0)) for s in stages]
    if with_cards:
        for column in columns:
            if column.count:
                column.cards = _cards(user, model, column.stage, offset=0, limit=BOARD_CARDS,
                                      now=now)
    return columns


def stage_column_page(*, user, model: StageModel, stage: Stage, page: int) -> dict[str, Any]:
    """Page `page` (from 1) of a column's cards, with whether another page follows (read as
    one row more than a page, so no count is needed)."""
    page = max(1, page)
    cards = _cards(user, model, stage, offset=(page - 1) * BOARD_CARDS, limit=BOARD_CARDS + 1,
                   now=timezone.now())
    return {"cards": cards[:BOARD_CARDS], "page": page, "has_next": len(cards) > BOARD_CARDS,
            "has_previous": page > 1}


def transition_log(*, user, model: StageModel | None = None, from_stage: str = "",
                   to_stage: str = "", source: str = "", start: date | None = None,
                   end: date | None = None,
                   search: str = "", page: int = 1) -> dict[str, Any]:
    """Stage transitions the user may see, newest first, filtered; a page and whether another
    follows (no count over what may be millions of rows)."""
    rows = access.scope_customers(StageTransition.objects.all(), user,
                                  owner_field="customer__owner")
    if model is not None:
        rows = rows.filter(model=model)
    if from_stage:
        rows = rows.filter(Q(from_key="") if from_stage == "-" else Q(from_key=from_stage))
    if to_stage:
        rows = rows.filter(to_key=to_stage)
    if source:
        rows = rows.filter(source=source)
    # Whole days in the current time zone, as bounds the (model, at) index can use.
    if start:
        rows = rows.filter(at__gte=timezone.make_aware(datetime.combine(start, time.min)))
    if end:
        rows = rows.filter(at__lte=timezone.make_aware(datetime.combine(end, time.max)))
    if search.strip():
        customers = crm_selectors.customer_search(
            access.scope_customers(Customer.objects.all(), user), search)
        rows = rows.filter(customer__in=customers.values("pk"))
    page = max(1, page)
    offset = (page - 1) * LOG_PAGE_SIZE
    found = list(rows.select_related("model", "from_stage", "to_stage", "customer", "actor")
                 .order_by("-at", "-id")[offset:offset + LOG_PAGE_SIZE + 1])
    return {"rows": found[:LOG_PAGE_SIZE], "page": page, "has_next": len(found) > LOG_PAGE_SIZE,
            "has_previous": page > 1}
