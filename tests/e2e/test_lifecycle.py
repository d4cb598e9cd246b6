"""The lifecycle pages in a real browser: an operator drags a card to another stage and gives
the reason; an admin tries a threshold in the simulation before saving it, and creates a
custom model (seed 004's stages)."""

import importlib
import json
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.utils import timezone
from playwright import sync_api

from lifecycle import services
from lifecycle.models import CustomerStage, StageModel, StageTransition
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture
def shop(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    admin = UserFactory(username="boss", roles=["admin"])
    operator = UserFactory(username="op_li", roles=["operator"], first_name="娜", last_name="李")
    now = timezone.now()
    customers = [CustomerFactory(owner=operator, name=name, joined_at=now - timedelta(days=20))
                 for name in ("陈一", "陈二", "陈三")]
    value = StageModel.objects.get(key="value")
    services.stage_model_evaluate(model=value)            # all three in intro
    return {"admin": admin, "operator": operator, "customers": customers, "value": value}


def sign_in(page, username: str, next_url: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/login/?next={next_url}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")


def column(page, key: str):
    return page.locator(f"[data-column='{key}']")


def test_an_operator_drags_a_card_to_another_stage_with_a_reason(page, live_server, shop):
    sign_in(page, "op_li", "/lifecycle/value/board/")
    expect(page.locator("h1")).to_have_text("价值生命周期")
    expect(column(page, "intro").locator("[data-count]")).to_have_text("3")
    expect(column(page, "intro").locator("[data-card]")).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    card = column(page, "intro").locator("[data-card]", has_text="陈二")
    card.drag_to(column(page, "mature"))
    dialog = page.locator("#move-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-move-title]")).to_have_text("Move 陈二 to 成熟期")
    dialog.locator("textarea[name=reason]").fill("老客户转介绍，已复购三次")
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-lifecycle-board-move.png"))
    dialog.locator("button[type=submit]").click()

    expect(page.locator(".flash")).to_contain_text("陈二 moved to 成熟期.")
    expect(column(page, "mature").locator("[data-card]", has_text="陈二")).to_be_visible()
    expect(column(page, "mature").locator("[data-count]")).to_have_text("1")
    expect(column(page, "intro").locator("[data-count]")).to_have_text("2")
    transition = StageTransition.objects.get(customer=shop["customers"][1], to_key="mature")
    assert (transition.source, transition.reason) == ("manual", "老客户转介绍，已复购三次")

    # A refusal is shown in the dialog: the customer is already there.
    card = column(page, "intro").locator("[data-card]", has_text="陈一")
    CustomerStage.objects.filter(customer=shop["customers"][0]).update(
        stage=shop["value"].stages.get(key="growth"))
    card.drag_to(column(page, "growth"))
    dialog.locator("textarea[name=reason]").fill("首单")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator("#move-error")).to_contain_text("the customer is already in 成长期")
    dialog.locator("[data-move-cancel]").click()
    expect(dialog).to_be_hidden()


def test_an_admin_simulates_a_threshold_and_saves_it(page, live_server, shop):
    sign_in(page, "boss", "/lifecycle/value/edit/")
    expect(page.locator("h1")).to_have_text("Edit “价值生命周期”")
    expect(page.locator(".cb").first).to_be_visible()          # the builders are mounted
    page.fill("[data-threshold='dormant_days']", "10")
    page.click("button[data-simulate]")

    simulation = page.locator("#simulation")
    expect(simulation.locator(".lc-sim-summary")).to_have_text("3 customers would move.")
    dormant = simulation.locator("tr[data-stage='dormant'] td")
    expect(dormant.nth(1)).to_have_text("0")
    expect(dormant.nth(2)).to_have_text("3")
    matrix = simulation.locator("[data-simulation-matrix]")
    expect(matrix.locator("td.lc-move")).to_have_count(1)
    expect(matrix.locator("td.lc-move")).to_have_text("3")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-lifecycle-simulation.png"), full_page=True)
    assert StageModel.objects.get(key="value").thresholds["dormant_days"] == 30

    page.click("button[value=save]")
    expect(page.locator(".flash")).to_contain_text("Stage model “价值生命周期” saved.")
    assert StageModel.objects.get(key="value").thresholds["dormant_days"] == 10
    expect(page.locator("[data-threshold='dormant_days']")).to_have_value("10")


SEED_004 = [
    ("new", "新客户", None),
    ("contacted", "初步沟通", {"field": "event", "type": "message_in", "op": "count_gte",
                            "value": 1, "since_joined": True}),
    ("intent", "意向客户", {"field": "event", "type": "link_clicked", "op": "count_gte",
                        "value": {"threshold": "intent_clicks"}, "since_joined": True}),
    ("deal", "成交", None),                          # built with the mouse below
    ("lost", "无意向", {"field": "status", "op": "eq", "value": "deleted_us"}),
]


def test_an_admin_creates_a_custom_model(page, live_server, shop):
    sign_in(page, "boss", "/lifecycle/")
    page.click("text=New model")
    expect(page.locator("h1")).to_have_text("New stage model")
    page.fill("input[name=name]", "销售阶段")
    page.fill("input[name=key]", "sales")
    page.click("button[value=add-threshold]")
    page.fill("input[name=threshold-0-name]", "intent_clicks")
    page.fill("input[name=threshold-0-value]", "2")
    for index, (key, name, condition) in enumerate(SEED_004):
        page.click("button[value=add-stage]")
        row = page.locator(f"[data-stage-row='{index}']")
        row.locator(f"input[name=stage-{index}-key]").fill(key)
        row.locator(f"input[name=stage-{index}-name]").fill(name)
        row.locator(f"input[name=stage-{index}-precedence]").fill(str(100 - 20 * index))
        if condition is not None:
            row.locator(".cb-toggle").click()
            row.locator("textarea").fill(json.dumps(condition, ensure_ascii=False))
    # 成交: one condition built with the mouse — paid orders ≥ 1.
    deal = page.locator("[data-stage-row='3']")
    deal.locator(".cb-actions >> text=+ Condition").click()
    deal.locator("[data-cb-key='root.0.field']").select_option("orders_count")
    deal.locator("[data-cb-key='root.0.op']").select_option("gte")
    deal.locator("[data-cb-key='root.0.value']").fill("1")
    deal.locator("[data-cb-key='root.0.value']").press("Tab")
    page.fill("input[name=stage-4-color]", "#94a3b8")

    page.click("button[data-simulate]")
    expect(page.locator("#simulation .lc-sim-summary")).to_have_text("3 customers would move.")
    page.click("button[value=save]")

    expect(page.locator(".flash")).to_contain_text("Stage model “销售阶段” saved.")
    model = StageModel.objects.get(key="sales")
    stages = list(model.stages.order_by("position"))
    assert [(s.key, s.name) for s in stages] == [(k, n) for k, n, _c in SEED_004]
    assert stages[3].condition == {"all": [{"field": "orders_count", "op": "gte", "value": 1}]}
    assert stages[2].condition["value"] == {"threshold": "intent_clicks"}
    assert (stages[4].color, model.thresholds) == ("#94a3b8", {"intent_clicks": 2})

    page.click("text=Board")
    expect(page.locator("h1")).to_have_text("销售阶段")
    expect(page.locator("[data-column] h2")).to_have_text(["新客户", "初步沟通", "意向客户",
                                                           "成交", "无意向"])
