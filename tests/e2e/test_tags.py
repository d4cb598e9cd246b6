"""The tags pages in a real browser: an admin creates a tag group and a coloured tag, then a
rule for it (the condition typed as JSON, whether or not the builder hides the textarea), runs
it now and reads its figures. Screenshots land in $SCREENSHOT_DIR (/tmp)."""

import json

import pytest
from playwright import sync_api

from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser

CONDITION = {"all": [{"field": "city", "op": "eq", "value": "上海"}]}


def sign_in(page, live_server, username: str) -> None:
    page.goto("/login/?next=/tags/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/tags/")


def set_condition(page, condition: dict) -> None:
    """Type the condition into its textarea; when the builder hides the textarea, set its value
    the way the builder does and tell it so with an `input` event."""
    # Once the builder is ready (built, hiding the textarea — which a fill already under way
    # would wait on for ever — or given up) the textarea's visibility no longer changes.
    textarea = page.locator("textarea[data-condition-builder][data-builder-ready]")
    textarea.wait_for(state="attached")
    text = json.dumps(condition, ensure_ascii=False)
    if textarea.is_visible():
        textarea.fill(text)
    else:
        textarea.evaluate("(el, text) => { el.value = text; "
                          "el.dispatchEvent(new Event('input', {bubbles: true})); }", text)


@pytest.mark.django_db(transaction=True)
def test_admin_creates_a_tag_and_a_rule_and_runs_it(page, live_server, admin_user):
    for city in ("上海", "上海", "上海", "杭州"):
        CustomerFactory(city=city)
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, admin_user.username)

    new_group = page.locator("#new-group")
    new_group.locator("input[name=name]").fill("消费偏好")
    new_group.locator("textarea[name=description]").fill("顾客常买的品类")
    new_group.locator("input[name=exclusive]").check()
    new_group.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_contain_text("Tag group “消费偏好” created.")
    group = page.locator(".tg-group", has_text="消费偏好")
    expect(group).to_contain_text("Exclusive")
    expect(group).to_contain_text("顾客常买的品类")

    new_tag = page.locator("#new-tag")
    new_tag.locator("input[name=name]").fill("茶叶控")
    new_tag.locator("input[type=color]").fill("#16a34a")
    new_tag.locator("select[name=group]").select_option(label="消费偏好")
    new_tag.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_contain_text("Tag “茶叶控” created.")
    chip = page.locator(".tg-group", has_text="消费偏好").locator(".tg-chip", has_text="茶叶控")
    expect(chip).to_be_visible()
    expect(chip).to_have_css("color", "rgb(22, 163, 74)")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-tags.png"), full_page=True)

    # The row's "Add rule" opens the rule form with the tag chosen.
    page.locator("tr", has_text="茶叶控").get_by_role("link", name="Add rule").click()
    expect(page.locator("h1")).to_have_text("New tag rule")
    page.fill("input[name=name]", "上海的茶客")
    expect(page.locator("select[name=tag] option:checked")).to_have_text("茶叶控")
    page.select_option("select[name=mode]", "sync")
    set_condition(page, CONDITION)
    page.get_by_role("button", name="Create rule").click()
    expect(page.locator(".flash")).to_contain_text("Tag rule “上海的茶客” saved.")
    expect(page.locator("h1")).to_have_text("上海的茶客")

    page.get_by_role("button", name="Run now").click()
    expect(page.locator(".flash")).to_contain_text("“上海的茶客” ran: 3 matched, 3 added, "
                                                   "0 removed")
    run = page.locator("#runs tbody tr").first
    expect(run).to_contain_text("On demand")
    expect(run.locator("[data-figure=matched]")).to_have_text("3")
    expect(run.locator("[data-figure=added]")).to_have_text("+3")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-tag-rule.png"), full_page=True)

    page.click(".crumbs a[href='/tags/rules/']")
    row = page.locator("tr", has_text="上海的茶客")
    expect(row.locator("[data-figure=matched]")).to_have_text("3")
    expect(row).to_contain_text("Sync")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-tag-rules.png"), full_page=True)

    page.click("nav.tg-tabs a[href='/tags/']")
    row = page.locator("tr", has_text="茶叶控")
    expect(row.locator("[data-count]")).to_have_text("3")

    # "Edit" opens the tag's editor beside the list (htmx): deleting states what it does.
    page.evaluate("window.__sameDocument = true")
    row.get_by_role("link", name="Edit").click()
    editor = page.locator("#tg-editor #tag-editor")
    expect(editor.locator("[data-effect=delete]")).to_contain_text(
        "Deleting “茶叶控” removes it from 3 customers")
    expect(editor.locator("[data-effect=delete]")).to_contain_text(
        "The 1 rule that adds it is deleted too, with its runs: 上海的茶客")
    assert page.evaluate("window.__sameDocument === true")
    page.screenshot(path=str(SCREENSHOT_DIR / "dashboard-tag-editor.png"))
