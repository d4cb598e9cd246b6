"""The customer list in a real browser, as an operator: filter by stage and tag with the
pickers, select rows, add a tag and move their stage with a reason, and see the results; the
page fits a 1280 px window in English and Chinese. Screenshots land in $SCREENSHOT_DIR."""

import importlib
import re

import pytest
from django.apps import apps as django_apps
from django.utils import timezone
from playwright import sync_api

from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from tagging.models import CustomerTag, Tag, TagGroup
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


def place(customer, model: StageModel, key: str) -> None:
    CustomerStage.objects.create(customer=customer, model=model,
                                 stage=Stage.objects.get(model=model, key=key),
                                 entered_at=timezone.now(), source="rule")


def give(customer, tag: Tag) -> None:
    CustomerTag.objects.create(customer=customer, tag=tag, source="manual",
                               added_at=timezone.now())


@pytest.fixture
def shop(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    operator = UserFactory(username="op_li", roles=["operator"], first_name="娜",
                           last_name="李")
    value = StageModel.objects.get(key="value")
    interest = TagGroup.objects.create(name="兴趣")
    level = TagGroup.objects.create(name="等级")
    beauty = Tag.objects.create(group=interest, name="美妆", color="#d9488b")
    Tag.objects.create(group=level, name="VIP", color="#b7791f")
    people = {}
    for name, stage, tagged in (("林小姐", "dormant", True), ("周先生", "dormant", True),
                                ("吴女士", "dormant", False), ("郑先生", "growth", True)):
        customer = CustomerFactory(owner=operator, name=name,
                                   external_id=f"wm-{len(people):02d}-很长的外部编号-abcdefghij",
                                   city="杭州")
        place(customer, value, stage)
        if tagged:
            give(customer, beauty)
        people[name] = customer
    stranger = CustomerFactory(owner=UserFactory(roles=["operator"]), name="外人")
    place(stranger, value, "dormant")
    give(stranger, beauty)
    return people


def fits(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def pick(page, wrapper, text: str) -> None:
    wrapper.locator(".ts-control").click()
    wrapper.locator(".ts-control input").fill(text)
    page.locator(".ts-dropdown:visible .option", has_text=text).first.click()


@pytest.mark.django_db(transaction=True)
def test_an_operator_filters_selects_tags_and_moves_stage(page, live_server, shop):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/?next=/customers/")
    page.fill("input[name=username]", "op_li")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Customers")
    rows = page.locator(".table-customers tbody tr")
    expect(rows).to_have_count(4)
    fits(page)

    filters = page.locator("form[data-customer-filters]")
    dormant = Stage.objects.get(model__key="value", key="dormant").name
    pick(page, filters.locator(".ts-wrapper").nth(0), dormant)
    page.keyboard.press("Escape")                  # the picker closes: the filter applies
    expect(page).to_have_url(re.compile(r"stage=value%3Adormant"))
    expect(rows).to_have_count(3)
    pick(page, filters.locator(".ts-wrapper").nth(1), "美妆")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"[?&]tag=\d+"))
    expect(rows).to_have_count(2)
    expect(page.locator(".table-customers")).to_contain_text("林小姐")
    expect(page.locator(".table-customers")).to_contain_text("周先生")
    expect(page.locator(".table-customers")).not_to_contain_text("外人")
    expect(page.locator("[data-total]")).to_contain_text("2 customers")
    fits(page)

    # Select the page, add a tag.
    page.check("input[data-select-page]")
    expect(page.locator("[data-selected-count]")).to_have_text("2")
    page.check("input[name=action][value=tags]")
    pick(page, page.locator(".cb-fields").first.locator(".ts-wrapper").first, "VIP")
    page.keyboard.press("Escape")
    page.click("[data-bulk-submit]")
    expect(page.locator(".flash")).to_contain_text("2 tags added, 0 removed for 2 customers")
    expect(rows.first).to_contain_text("VIP")
    assert set(CustomerTag.objects.filter(tag__name="VIP").values_list(
        "customer__name", flat=True)) == {"林小姐", "周先生"}
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-customers-bulk.png"), full_page=True)

    # Select them again and move their stage, with a reason.
    page.check("input[data-select-page]")
    page.check("input[name=action][value=stage]")
    growth = Stage.objects.get(model__key="value", key="growth").name
    page.select_option("select[name=target]", label=growth)
    page.fill("input[name=reason]", "电话回访后有购买意向")
    page.click("[data-bulk-submit]")
    expect(page.locator(".flash")).to_contain_text(f"2 moved to {growth}")
    expect(page.locator(".empty")).to_contain_text("No customer matches these filters.")
    moves = StageTransition.objects.filter(to_key="growth", reason="电话回访后有购买意向")
    assert sorted(moves.values_list("customer__name", flat=True)) == ["周先生", "林小姐"]

    # The whole list, in Chinese: still no horizontal scrolling.
    page.goto("/customers/")
    page.click(".lang-switch button[value=zh-hans]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(rows).to_have_count(4)
    expect(page.locator(".table-customers")).to_contain_text(growth)
    fits(page)
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-customers-zh.png"), full_page=True)
