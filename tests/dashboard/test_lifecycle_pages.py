"""The lifecycle pages (issue 16, point 4): the models, each model's board with manual moves,
the model editor with its simulation, stage deletion and the transition log; who may do what,
and what each page costs in queries."""

import importlib
import json
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.utils import timezone

from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def models(db):
    """The built-in models (a transactional test's flush may have removed them)."""
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    return {m.key: m for m in StageModel.objects.all()}


def place(customer, model: StageModel, stage_key: str, *, days: int = 0, locked: bool = False):
    at = timezone.now() - timedelta(days=days)
    return CustomerStage.objects.create(
        customer=customer, model=model, stage=model.stages.get(key=stage_key), entered_at=at,
        source="rule", locked_until=at + timedelta(days=7) if locked else None)


@pytest.fixture
def board(models, operator, other_operator):
    """Value-lifecycle places: the operator's 张三 (intro) and 李四 (growth), another
    operator's 王五 (intro)."""
    value = models["value"]
    mine = CustomerFactory(owner=operator, name="张三")
    growth = CustomerFactory(owner=operator, name="李四")
    theirs = CustomerFactory(owner=other_operator, name="王五")
    place(mine, value, "intro", days=3)
    place(growth, value, "growth", days=12)
    place(theirs, value, "intro", days=1)
    return {"value": value, "mine": mine, "growth": growth, "theirs": theirs}


# --- Who may do what ------------------------------------------------------------------------

PAGES = [
    ("get", "/lifecycle/"), ("get", "/lifecycle/new/"), ("post", "/lifecycle/new/"),
    ("post", "/lifecycle/new/simulate/"), ("get", "/lifecycle/log/"),
    ("get", "/lifecycle/value/board/"), ("get", "/lifecycle/value/board/intro/"),
    ("post", "/lifecycle/value/move/"), ("get", "/lifecycle/value/edit/"),
    ("post", "/lifecycle/value/edit/"), ("post", "/lifecycle/value/simulate/"),
    ("post", "/lifecycle/value/delete/"), ("post", "/lifecycle/value/stages/intro/delete/"),
    ("get", "/lifecycle/value/log/"),
]


@pytest.mark.parametrize("method, path", PAGES)
def test_anonymous_readers_are_sent_to_sign_in(client, models, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


ADMIN_ONLY = [
    ("get", "/lifecycle/new/"), ("post", "/lifecycle/new/"), ("post", "/lifecycle/new/simulate/"),
    ("get", "/lifecycle/value/edit/"), ("post", "/lifecycle/value/edit/"),
    ("post", "/lifecycle/value/simulate/"), ("post", "/lifecycle/value/delete/"),
    ("post", "/lifecycle/value/stages/intro/delete/"),
]
CUSTOMER_PAGES = [
    ("get", "/lifecycle/log/"), ("get", "/lifecycle/value/log/"),
    ("get", "/lifecycle/value/board/intro/"), ("post", "/lifecycle/value/move/"),
]


@pytest.mark.parametrize("method, path", ADMIN_ONLY + CUSTOMER_PAGES)
def test_analysts_may_not_use_customer_pages_or_the_editor(reader, analyst, models, method,
                                                           path):
    assert getattr(reader(analyst), method)(path).status_code == 403


@pytest.mark.parametrize("method, path", ADMIN_ONLY)
def test_operators_may_not_edit_models(reader, operator, models, method, path):
    assert getattr(reader(operator), method)(path).status_code == 403
    assert StageModel.objects.filter(key="value").exists()
    assert Stage.objects.filter(model__key="value", key="intro").exists()


def test_everyone_with_a_role_sees_the_models_with_their_counts(reader, board, analyst,
                                                                operator, admin_user):
    for user, total, new_link in ((analyst, 3, False), (operator, 2, False),
                                  (admin_user, 3, True)):
        response = reader(user).get("/lifecycle/")
        page = response.content.decode()
        assert response.status_code == 200
        assert "价值生命周期" in page and "决策旅程" in page and "AIPL" in page
        assert f"{total} customers" in page
        assert ("/lifecycle/new/" in page) is new_link
        assert ("/lifecycle/value/edit/" in page) is new_link


def test_analysts_see_the_boards_figures_but_no_customer(reader, analyst, board):
    page = reader(analyst).get("/lifecycle/value/board/").content.decode()
    assert "引入期" in page and "成长期" in page
    assert 'data-count>2<' in page                       # intro: everyone's
    assert "张三" not in page and "王五" not in page and "Move…" not in page


def test_no_role_no_page(reader, db, models):
    from tests.factories import UserFactory

    nobody = UserFactory(username="nobody")
    assert reader(nobody).get("/lifecycle/").status_code == 403
    assert reader(nobody).get("/lifecycle/value/board/").status_code == 403


# --- The board ------------------------------------------------------------------------------

def test_the_board_shows_columns_counts_and_the_operators_cards(reader, operator, board):
    response = reader(operator).get("/lifecycle/value/board/")
    page = response.content.decode()
    assert response.status_code == 200
    names = ["引入期", "成长期", "成熟期", "休眠期", "流失期"]
    assert [page.index(f'id="col-{k}">{n}<') for k, n in zip(
        ["intro", "growth", "mature", "dormant", "churn"], names, strict=True)] == sorted(
        page.index(f'id="col-{k}">{n}<') for k, n in zip(
            ["intro", "growth", "mature", "dormant", "churn"], names, strict=True))
    assert page.count("data-count>1<") == 2 and page.count("data-count>0<") == 3
    assert "张三" in page and "李四" in page and "王五" not in page
    assert "12 days in stage" in page and "3 days in stage" in page
    assert "dashboard/board.js" in page


def test_an_admin_sees_every_card(reader, admin_user, board):
    page = reader(admin_user).get("/lifecycle/value/board/").content.decode()
    assert "张三" in page and "王五" in page and "data-count>2<" in page


def test_each_column_is_paged(reader, admin_user, board):
    value = board["value"]
    for n in range(24):
        place(CustomerFactory(name=f"成熟客{n:02d}"), value, "mature", days=n)
    client = reader(admin_user)
    page = client.get("/lifecycle/value/board/").content.decode()
    assert "data-count>24<" in page
    assert "成熟客00" in page and "成熟客19" in page and "成熟客20" not in page
    assert page.count("/lifecycle/value/board/mature/?page=2") == 2      # href and hx-get

    fragment = client.get("/lifecycle/value/board/mature/?page=2", **HTMX)
    text = fragment.content.decode()
    assert fragment.status_code == 200 and "<html" not in text
    assert [f"成熟客{n}" in text for n in range(20, 24)] == [True] * 4
    assert "成熟客19" not in text and "?page=3" not in text

    # The same column as a page of its own, for a browser without htmx.
    full = client.get("/lifecycle/value/board/mature/?page=2").content.decode()
    assert "<html" in full and "成熟客23" in full and "?page=1" in full


def test_the_column_fragment_is_scoped_and_404s_for_an_unknown_stage(reader, operator, board):
    client = reader(operator)
    text = client.get("/lifecycle/value/board/intro/", **HTMX).content.decode()
    assert "张三" in text and "王五" not in text
    assert client.get("/lifecycle/value/board/nowhere/").status_code == 404
    assert client.get("/lifecycle/nowhere/board/").status_code == 404


def test_moving_a_card_with_a_reason_records_a_manual_transition(reader, operator, board):
    mine, value = board["mine"], board["value"]
    response = reader(operator).post("/lifecycle/value/move/", {
        "customer": mine.pk, "stage": "mature", "reason": "电话确认复购"}, **HTMX)
    assert response.status_code == 200 and response["HX-Refresh"] == "true"
    assert CustomerStage.objects.get(customer=mine, model=value).stage.key == "mature"
    transition = StageTransition.objects.get(customer=mine, model=value)
    assert (transition.from_key, transition.to_key, transition.source, transition.reason,
            transition.actor) == ("intro", "mature", "manual", "电话确认复购", operator)

    page = reader(operator).get("/lifecycle/value/board/").content.decode()
    assert "moved to 成熟期" in page
    mature = page.index('data-column="mature"')
    assert page.index("张三", mature) < page.index('data-column="dormant"')


def test_the_no_script_move_form_redirects_to_the_board(reader, operator, board):
    response = reader(operator).post("/lifecycle/value/move/", {
        "customer": board["growth"].pk, "stage": "dormant", "reason": "半年未回复"},
        follow=True)
    assert response.redirect_chain == [("/lifecycle/value/board/", 302)]
    assert "李四 moved to 休眠期." in response.content.decode()
    assert CustomerStage.objects.get(customer=board["growth"],
                                     model=board["value"]).stage.key == "dormant"


def test_a_move_without_a_reason_is_refused_in_the_dialog(reader, operator, board):
    client = reader(operator)
    response = client.post("/lifecycle/value/move/", {
        "customer": board["mine"].pk, "stage": "growth", "reason": "  "}, **HTMX)
    assert response.status_code == 400
    assert "reason: say why the customer is moved" in response.content.decode()
    followed = client.post("/lifecycle/value/move/", {
        "customer": board["mine"].pk, "stage": "growth"}, follow=True)
    assert "reason: say why the customer is moved" in followed.content.decode()
    assert not StageTransition.objects.filter(customer=board["mine"]).exists()


def test_a_monotonic_model_refuses_an_operators_move_back(reader, operator, admin_user, board):
    journey = StageModel.objects.get(key="journey")
    place(board["mine"], journey, "purchase", locked=True)
    response = reader(operator).post("/lifecycle/journey/move/", {
        "customer": board["mine"].pk, "stage": "interest", "reason": "误判"}, **HTMX)
    assert response.status_code == 400
    assert "only moves forward; only an admin may move a customer back" in (
        response.content.decode())
    assert CustomerStage.objects.get(customer=board["mine"], model=journey).stage.key == (
        "purchase")
    # An admin may; the lock a manual move sets is the model's.
    admin = reader(admin_user).post("/lifecycle/journey/move/", {
        "customer": board["mine"].pk, "stage": "interest", "reason": "误判"}, **HTMX)
    assert admin.status_code == 200
    moved = CustomerStage.objects.get(customer=board["mine"], model=journey)
    assert moved.stage.key == "interest" and moved.locked_until > timezone.now()


def test_moving_to_the_stage_the_customer_is_in_or_to_no_stage_is_refused(reader, operator,
                                                                          board):
    client = reader(operator)
    same = client.post("/lifecycle/value/move/", {
        "customer": board["mine"].pk, "stage": "intro", "reason": "x"}, **HTMX)
    assert same.status_code == 400 and "already in 引入期" in same.content.decode()
    unknown = client.post("/lifecycle/value/move/", {
        "customer": board["mine"].pk, "stage": "nowhere", "reason": "x"}, **HTMX)
    assert unknown.status_code == 400 and "Choose a stage" in unknown.content.decode()


def test_another_operators_customer_is_not_found(reader, operator, board):
    client = reader(operator)
    response = client.post("/lifecycle/value/move/", {
        "customer": board["theirs"].pk, "stage": "growth", "reason": "抢客户"}, **HTMX)
    assert response.status_code == 404
    assert client.post("/lifecycle/value/move/", {"customer": "x", "stage": "growth",
                                                  "reason": "r"}).status_code == 404
    assert not StageTransition.objects.filter(customer=board["theirs"]).exists()


# --- The model editor -----------------------------------------------------------------------

MESSAGED = {"field": "event", "type": "message_in", "op": "count_gte", "value": 1,
            "since_joined": True}
INTENT = {"any": [
    {"field": "event", "type": "link_clicked", "op": "count_gte",
     "value": {"threshold": "intent_clicks"}, "since_joined": True},
    {"field": "event", "type": "coupon_redeemed", "op": "count_gte", "value": 1,
     "since_joined": True}]}
DEAL = {"field": "order", "op": "count_gte", "value": 1, "since_joined": True}
LOST = {"any": [{"field": "status", "op": "eq", "value": "deleted_us"},
                {"field": "last_active_at", "op": "older_than_days",
                 "value": {"threshold": "silent_days"}}]}
# Seed 004's stages (微伴助手's 客户阶段): 新客户 → 初步沟通 → 意向客户 → 成交 → 无意向.
SEED_004 = [("new", "新客户", "#60a5fa", 100, None), ("contacted", "初步沟通", "#34d399", 40, MESSAGED),
            ("intent", "意向客户", "#f59e0b", 30, INTENT), ("deal", "成交", "#16a34a", 20, DEAL),
            ("lost", "无意向", "#94a3b8", 10, LOST)]


def editor_post(*, key="sales", name="销售阶段", stages=SEED_004, thresholds=None, op="save",
                monotonic=False, **extra):
    thresholds = {"intent_clicks": 2, "silent_days": 60} if thresholds is None else thresholds
    data = {"key": key, "name": name, "description": "Seed 004", "lock_days": "3",
            "interval_minutes": "15", "order": "5", "active": "1", "op": op,
            "threshold-count": str(len(thresholds)), "stage-count": str(len(stages))}
    if monotonic:
        data["monotonic"] = "1"
    for i, (t_name, value) in enumerate(thresholds.items()):
        data[f"threshold-{i}-name"], data[f"threshold-{i}-value"] = t_name, str(value)
    for i, (s_key, s_name, color, precedence, condition) in enumerate(stages):
        data.update({f"stage-{i}-key": s_key, f"stage-{i}-name": s_name,
                     f"stage-{i}-color": color, f"stage-{i}-precedence": str(precedence),
                     f"stage-{i}-condition": json.dumps(condition, ensure_ascii=False)
                     if condition is not None else ""})
    data.update(extra)
    return data


def test_the_editor_shows_a_models_stages_thresholds_and_conditions(reader, admin_user, board):
    response = reader(admin_user).get("/lifecycle/value/edit/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="threshold-count" value="4"' in page
    assert 'value="dormant_days"' in page and 'data-threshold="dormant_days"' in page
    assert 'name="stage-3-name" value="休眠期"' in page
    assert page.count("data-condition-builder") == 5
    assert "&quot;threshold&quot;: &quot;churn_days&quot;" in page
    assert 'type="color" name="stage-0-color" value="#60a5fa"' in page
    assert "2 customers" in page                              # intro, with a Delete… choice


def test_an_admin_creates_the_seed_004_model(reader, admin_user, models):
    client = reader(admin_user)
    assert "New stage model" in client.get("/lifecycle/new/").content.decode()

    response = client.post("/lifecycle/new/", editor_post())

    assert response.status_code == 302 and response["Location"] == "/lifecycle/sales/edit/"
    model = StageModel.objects.get(key="sales")
    assert (model.name, model.built_in, model.lock_days, model.monotonic, model.thresholds) == (
        "销售阶段", False, 3, False, {"intent_clicks": 2, "silent_days": 60})
    assert [(s.key, s.name, s.position, s.precedence, s.color, s.condition)
            for s in model.stages.order_by("position")] == [
        (k, n, i, p, c, cond) for i, (k, n, c, p, cond) in enumerate(SEED_004)]
    page = client.get(response["Location"]).content.decode()
    assert "Stage model “销售阶段” saved." in page
    listing = client.get("/lifecycle/").content.decode()
    assert "销售阶段" in listing and "Custom" in listing
    assert "新客户" in client.get("/lifecycle/sales/board/").content.decode()


def test_the_editors_buttons_add_and_reorder_rows_without_saving(reader, admin_user, models):
    client = reader(admin_user)
    added = client.post("/lifecycle/new/", editor_post(op="add-stage"))
    page = added.content.decode()
    assert added.status_code == 200 and 'name="stage-count" value="6"' in page
    assert 'name="stage-5-key" value=""' in page
    up = client.post("/lifecycle/new/", editor_post(op="up-2")).content.decode()
    assert up.index('value="意向客户"') < up.index('value="初步沟通"')
    removed = client.post("/lifecycle/new/", editor_post(op="remove-4")).content.decode()
    assert "无意向" not in removed and 'name="stage-count" value="4"' in removed
    assert not StageModel.objects.filter(key="sales").exists()


def test_renaming_reordering_and_recolouring_stages(reader, admin_user, models):
    client = reader(admin_user)
    assert client.post("/lifecycle/new/", editor_post()).status_code == 302
    stages = list(SEED_004)
    stages[1] = ("contacted", "已沟通", "#0ea5e9", 40, MESSAGED)
    stages[3], stages[4] = stages[4], stages[3]

    response = client.post("/lifecycle/sales/edit/", editor_post(name="销售漏斗",
                                                                  stages=stages))

    assert response.status_code == 302
    model = StageModel.objects.get(key="sales")
    assert model.name == "销售漏斗"
    assert [(s.key, s.name, s.color) for s in model.stages.order_by("position")] == [
        ("new", "新客户", "#60a5fa"), ("contacted", "已沟通", "#0ea5e9"),
        ("intent", "意向客户", "#f59e0b"), ("lost", "无意向", "#94a3b8"),
        ("deal", "成交", "#16a34a")]


@pytest.mark.parametrize("stages, message", [
    ([*SEED_004[:2], ("intent", "意向客户", "#f59e0b", 30,
                      {"all": [{"field": "event", "op": "older_than", "value": 1}]}),
      *SEED_004[3:]], "stages[2].condition.all[0].op: unknown operator &#x27;older_than&#x27;"),
    ([*SEED_004[:2], ("intent", "意向客户", "#f59e0b", 30,
                      {"field": "event", "type": "link_clicked", "op": "count_gte",
                       "value": {"threshold": "clicks"}}), *SEED_004[3:]],
     "stages[2].condition.value: unknown threshold &#x27;clicks&#x27;"),
    ([*SEED_004, ("new", "又一个", "#000000", 5, None)], "stages: each stage key appears once"),
])
def test_a_refused_definition_is_a_400_keeping_what_was_typed(reader, admin_user, models,
                                                             stages, message):
    response = reader(admin_user).post("/lifecycle/new/", editor_post(stages=stages))
    page = response.content.decode()
    assert response.status_code == 400
    assert message in page
    assert 'value="销售阶段"' in page and 'value="意向客户"' in page
    assert not StageModel.objects.filter(key="sales").exists()


def test_a_bad_json_condition_and_a_taken_key_are_400s(reader, admin_user, models):
    client = reader(admin_user)
    bad = editor_post()
    bad["stage-1-condition"] = '{"field": "event",'
    response = client.post("/lifecycle/new/", bad)
    assert response.status_code == 400
    assert "stages[1].condition: not valid JSON" in response.content.decode()
    taken = client.post("/lifecycle/new/", editor_post(key="value"))
    assert taken.status_code == 400 and "key: " in taken.content.decode()
    assert StageModel.objects.get(key="value").name == "价值生命周期"


@pytest.fixture
def value_evaluated(models, operator):
    """Two customers silent for 20 days and one who bought yesterday, evaluated: intro 2,
    growth 1."""
    now = timezone.now()
    for name in ("静默甲", "静默乙"):
        CustomerFactory(owner=operator, name=name, joined_at=now - timedelta(days=20))
    buyer = CustomerFactory(owner=operator, name="买家", joined_at=now - timedelta(days=20))
    from tests.factories import OrderFactory

    OrderFactory(customer=buyer, placed_at=now - timedelta(days=1))
    type(buyer).objects.filter(pk=buyer.pk).update(
        orders_count=1, last_order_at=now - timedelta(days=1),
        first_order_at=now - timedelta(days=1), last_active_at=now - timedelta(days=1))
    services.stage_model_evaluate(model=models["value"])
    return models["value"]


def value_form(model: StageModel, op="save", **thresholds):
    stages = [(s.key, s.name, s.color, s.precedence, s.condition)
              for s in model.stages.order_by("position")]
    return editor_post(key="value", name=model.name, stages=stages,
                       thresholds={**model.thresholds, **thresholds}, op=op)


def test_simulating_a_threshold_change_shows_counts_and_the_matrix(reader, admin_user,
                                                                   value_evaluated):
    assert {cs.stage.key for cs in CustomerStage.objects.filter(model=value_evaluated)} == {
        "intro", "growth"}
    response = reader(admin_user).post("/lifecycle/value/simulate/",
                                       value_form(value_evaluated, dormant_days=10), **HTMX)
    text = response.content.decode()
    assert response.status_code == 200, text
    assert "2 customers would move." in text
    intro = text[text.index('<tr data-stage="intro">'):]
    assert '<td class="num">2</td><td class="num">0</td>' in intro[:400]
    dormant = text[text.index('<tr data-stage="dormant">'):]
    assert '<td class="num">0</td><td class="num">2</td>' in dormant[:400]
    assert 'class="down">-2<' in intro[:400] and 'class="up">+2<' in dormant[:400]
    matrix = text[text.index("data-simulation-matrix"):]
    assert matrix.count('class="num lc-move">2<') == 1        # intro → dormant
    assert matrix.count('class="num lc-stay">1<') == 1        # growth stays
    # Nothing saved, nothing moved.
    assert StageModel.objects.get(key="value").thresholds["dormant_days"] == 30
    assert {cs.stage.key for cs in CustomerStage.objects.filter(model=value_evaluated)} == {
        "intro", "growth"}


def test_the_simulation_uses_the_proposed_stages_and_names_a_bad_node(reader, admin_user,
                                                                      value_evaluated):
    form = value_form(value_evaluated)
    form["stage-count"] = "6"
    form.update({"stage-5-key": "vip", "stage-5-name": "大客户", "stage-5-color": "#ff0000",
                 "stage-5-precedence": "5", "stage-5-condition": json.dumps(
                     {"field": "orders_count", "op": "gte", "value": 1})})
    text = reader(admin_user).post("/lifecycle/value/simulate/", form, **HTMX).content.decode()
    assert "大客户" in text and "1 customer would move." in text
    assert not Stage.objects.filter(key="vip").exists()

    form["stage-5-condition"] = json.dumps({"field": "orders_count", "op": "gte",
                                            "value": {"threshold": "nope"}})
    refused = reader(admin_user).post("/lifecycle/value/simulate/", form, **HTMX)
    assert refused.status_code == 400
    assert "stages[5].condition.value: unknown threshold" in refused.content.decode()


def test_simulating_without_javascript_re_renders_the_editor(reader, admin_user,
                                                             value_evaluated):
    response = reader(admin_user).post("/lifecycle/value/edit/",
                                       value_form(value_evaluated, dormant_days=10,
                                                  op="simulate"))
    page = response.content.decode()
    assert response.status_code == 200 and "<html" in page
    assert "2 customers would move." in page and 'value="10"' in page
    assert StageModel.objects.get(key="value").thresholds["dormant_days"] == 30


def test_saving_a_threshold_change(reader, admin_user, value_evaluated):
    response = reader(admin_user).post("/lifecycle/value/edit/",
                                       value_form(value_evaluated, dormant_days=45))
    assert response.status_code == 302
    assert StageModel.objects.get(key="value").thresholds == {
        "mature_orders": 3, "mature_window_days": 180, "dormant_days": 45, "churn_days": 90}
    refused = reader(admin_user).post("/lifecycle/value/edit/",
                                      value_form(value_evaluated, dormant_days="soon"))
    assert refused.status_code == 400 and "thresholds: an object of numbers" in (
        refused.content.decode())


def test_deleting_a_stage_moves_its_customers(reader, admin_user, board):
    client = reader(admin_user)
    assert client.post("/lifecycle/value/stages/intro/delete/", {}).status_code == 302
    assert Stage.objects.filter(model__key="value", key="intro").exists()

    response = client.post("/lifecycle/value/stages/intro/delete/", {"move_to": "growth"},
                           follow=True)

    assert "Stage “引入期” deleted; 2 customers moved to 成长期." in response.content.decode()
    assert not Stage.objects.filter(model__key="value", key="intro").exists()
    assert CustomerStage.objects.filter(model=board["value"], stage__key="growth").count() == 3
    moves = StageTransition.objects.filter(model=board["value"], to_key="growth")
    assert moves.count() == 2 and {m.source for m in moves} == {"system"}


def test_a_custom_model_can_be_deleted_but_not_a_built_in_one(reader, admin_user, models):
    client = reader(admin_user)
    client.post("/lifecycle/new/", editor_post())
    refused = client.post("/lifecycle/value/delete/", follow=True)
    assert "Built-in models cannot be deleted" in refused.content.decode()
    assert client.post("/lifecycle/sales/delete/").status_code == 302
    assert not StageModel.objects.filter(key="sales").exists()


# --- The transition log ---------------------------------------------------------------------

@pytest.fixture
def history(board, operator, admin_user):
    value = board["value"]
    services.customer_stage_move(customer=board["mine"], model=value,
                                 stage=value.stages.get(key="growth"), reason="首单",
                                 actor=operator)
    services.customer_stage_move(customer=board["theirs"], model=value,
                                 stage=value.stages.get(key="dormant"), reason="沉默",
                                 actor=admin_user)
    journey = StageModel.objects.get(key="journey")
    services.customer_stage_move(customer=board["growth"], model=journey,
                                 stage=journey.stages.get(key="trust"), reason="进群",
                                 actor=operator)
    StageTransition.objects.filter(reason="进群").update(at=timezone.now() - timedelta(days=10))
    return board


def test_the_log_lists_transitions_with_names_and_filters(reader, admin_user, history):
    client = reader(admin_user)
    page = client.get("/lifecycle/value/log/").content.decode()
    assert "首单" in page and "沉默" in page and "进群" not in page
    assert "引入期" in page and "休眠期" in page and "Manual" in page
    assert page.index("沉默") < page.index("首单")                    # newest first

    assert "首单" not in client.get("/lifecycle/value/log/?to_stage=dormant").content.decode()
    assert "沉默" not in client.get("/lifecycle/value/log/?q=张三").content.decode()
    assert "首单" in client.get("/lifecycle/value/log/?source=manual").content.decode()
    assert "No transition matches" in client.get(
        "/lifecycle/value/log/?source=rule").content.decode()
    everything = client.get("/lifecycle/log/").content.decode()
    assert "首单" in everything and "进群" in everything and "决策旅程" in everything
    day = (timezone.localdate() - timedelta(days=10)).isoformat()
    old = client.get(f"/lifecycle/log/?start={day}&end={day}").content.decode()
    assert "进群" in old and "首单" not in old
    assert "进群" in client.get("/lifecycle/log/?model=journey&from_stage=-").content.decode()


def test_operators_see_only_their_customers_transitions(reader, operator, history):
    page = reader(operator).get("/lifecycle/log/").content.decode()
    assert "首单" in page and "进群" in page and "沉默" not in page


# --- Bounded queries ------------------------------------------------------------------------

def test_the_pages_cost_a_fixed_number_of_queries(reader, admin_user, operator, board,
                                                  django_assert_max_num_queries):
    value = board["value"]
    for n in range(30):
        customer = CustomerFactory(owner=operator, name=f"批量{n}")
        stage = ["intro", "growth", "mature", "dormant", "churn"][n % 5]
        place(customer, value, stage, days=n)
        services.customer_stage_move(
            customer=customer, model=value,
            stage=value.stages.get(key="dormant" if stage != "dormant" else "churn"),
            reason="批量", actor=operator)
    for user in (admin_user, operator):
        client = reader(user)
        client.get("/lifecycle/")
        with django_assert_max_num_queries(8):
            assert client.get("/lifecycle/").status_code == 200
        with django_assert_max_num_queries(14):       # a query per column: five stages
            assert client.get("/lifecycle/value/board/").status_code == 200
        with django_assert_max_num_queries(8):
            assert client.get("/lifecycle/value/board/mature/?page=1", **HTMX).status_code == 200
        with django_assert_max_num_queries(9):
            assert client.get("/lifecycle/value/log/").status_code == 200
        with django_assert_max_num_queries(9):
            assert client.get("/lifecycle/log/?q=批量").status_code == 200
    client = reader(admin_user)
    client.get("/lifecycle/value/edit/")
    with django_assert_max_num_queries(8):
        assert client.get("/lifecycle/value/edit/").status_code == 200
