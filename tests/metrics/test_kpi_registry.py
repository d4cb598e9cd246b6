"""The KPI registry (metrics.kpis) is the one definition the dashboard's cards, the API's
description of `metrics/overview/` and docs/METRICS.md read: each shows the registry's words,
and the churn card says what it means when there is no stage history yet."""

import re
from html import unescape

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import translation

from lifecycle.models import CustomerStage, StageTransition
from metrics import kpis
from metrics.management.commands.kpi_reference import current_table
from tests.metrics.handbuilt import build, mar, moves

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def test_the_documented_table_is_the_registry():
    with translation.override("en"):
        assert current_table() == kpis.reference(), (
            "docs/METRICS.md's KPI table differs from metrics/kpis.py: run "
            "`python manage.py kpi_reference --write`")


def test_the_api_describes_every_kpi_in_the_registrys_words(admin_user):
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(admin_user)
    schema = client.get("/api/schema/", {"format": "json"}).json()
    description = schema["paths"]["/api/v1/metrics/overview/"]["get"]["description"]
    with translation.override("en"):
        for kpi in kpis.KPIS:
            assert f"{kpi.key} = {kpi.formula}" in description


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_cards_and_the_home_page_use_the_registry(admin_user, language):
    cache.clear()
    build()
    client = Client(HTTP_ACCEPT_LANGUAGE=language)
    client.force_login(admin_user)
    html = unescape(client.get("/metrics/", {"start": "2024-03-01", "end": "2024-03-10"})
                    .content.decode())
    with translation.override(language):
        for kpi in kpis.KPIS:
            card = re.search(rf'data-kpi="{kpi.key}" title="([^"]*)"', html)
            assert card and card.group(1) == str(kpi.formula), kpi.key
            assert str(kpi.label) in html
        home = unescape(client.get("/").content.decode())
        interaction = kpis.BY_KEY["interaction_rate"]
        assert f'data-figure="active" title="{interaction.formula}"' in home
        assert str(interaction.label) in home
    cache.clear()


def test_the_churn_card_without_stage_history_says_so(admin_user):
    """Everyone placed during the range (a new install): no one stood in the model at its
    start, so there is no rate — and the card says why instead of "— 1 of 0"."""
    cache.clear()
    data = build()
    CustomerStage.objects.filter(model__key="value").delete()
    StageTransition.objects.filter(model__key="value").delete()
    moves(data.c[1], "value", ("intro", mar(2, 10)), ("churn", mar(5, 10)))   # a move
    moves(data.c[2], "value", ("churn", mar(3, 10)))               # a first placement
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(admin_user)
    html = client.get("/metrics/", {"start": "2024-03-01", "end": "2024-03-10"}).content.decode()
    card = html[html.index('data-kpi="churn_rate"'):]
    card = card[:card.index("</div>\n  </div>")]
    assert "No stage history before this range; 1 moved in it" in unescape(card)
    assert " of 0" not in card
    cache.clear()


def test_kpi_reference_prints_the_table(capsys):
    call_command("kpi_reference")
    assert "`churn_rate` (流失率)" in capsys.readouterr().out
